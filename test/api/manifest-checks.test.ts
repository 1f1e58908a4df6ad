import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { encodeManifest, type ManifestHeader } from '../../repo-engine/manifest-codec.js';
import { snapshotKey } from '../../repo-engine/manifest-store.js';
import type { Repository } from '../../repo-engine/repository.js';
import type { VerifyReport } from '../../repo-engine/types.js';
import {
  backup,
  call,
  chunkOf,
  commit,
  openSession,
  putChunk,
  type TestChunk,
} from '../helpers/api-client.js';
import { startTestServer, TEST_CHUNKER, type TestServer } from '../helpers/server.js';

/**
 * A manifest's entry lengths and unreadable ranges are checked at commit against what the repository knows:
 * a snapshot naming a 1000-byte chunk as 4 GiB, or damage outside the image, is refused with 400 and
 * nothing changes; verify reports a stored manifest that gives a chunk a wrong length.
 */
let dir: string;
let srv: TestServer;
let agent: string;
const chunk = chunkOf('mc-chunk', 40_000);
const other = chunkOf('mc-other', 30_000);

test.before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'dv-manifest-checks-'));
  srv = await startTestServer({ dataDir: path.join(dir, 'data') });
  agent = await srv.makeToken('agent', ['mc1']);
  await backup(srv.url, agent, 'mc1', 'sda', [chunk, other]);
});

test.after.always(async () => {
  await srv?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** A manifest with the entries as given (lengths as claimed) and a header consistent with them. */
function manifest(entries: { id: string; length: number }[], extra: Partial<ManifestHeader> = {}): Buffer {
  const header: ManifestHeader = {
    formatVersion: 1,
    host: 'mc1',
    disk: 'sda',
    time: new Date().toISOString(),
    size: entries.reduce((n, e) => n + e.length, 0),
    sha256: '0'.repeat(64),
    chunker: TEST_CHUNKER,
    tags: [],
    unreadable: [],
    sourceFormat: 'raw',
    chunkCount: entries.length,
    ...extra,
  };
  return encodeManifest(header, entries);
}

const real = (c: TestChunk) => ({ id: c.id, length: c.data.length });

async function runVerify(): Promise<VerifyReport> {
  let job = (await call(srv.url, srv.adminToken, 'POST', '/v1/verify', { json: {} })).json.job;
  const deadline = Date.now() + 30_000;
  while (job.state === 'running' && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
    job = (await call(srv.url, srv.adminToken, 'GET', `/v1/jobs/${job.id}`)).json.job;
  }
  if (job.state !== 'done') throw new Error(`verify: ${JSON.stringify(job)}`);
  return job.result;
}

test.serial(
  'a commit whose entries give a chunk a wrong length is refused with 400 and changes nothing',
  async (t) => {
    const snapshots = (await call(srv.url, agent, 'GET', '/v1/snapshots')).json.snapshots.length;
    const session = await openSession(srv.url, agent, 'mc1');
    const cases: [string, { id: string; length: number }[], RegExp][] = [
      [
        '4 GiB for a 40,000-byte chunk',
        [real(other), { id: chunk.id, length: 4294967295 }],
        /entry 1 .*4294967295/,
      ],
      [
        'shorter than the chunk',
        [{ id: chunk.id, length: 39_999 }, real(other)],
        /entry 0 .*39999 bytes; the chunk is 40000/,
      ],
      [
        'longer than the chunk',
        [real(chunk), { id: other.id, length: 30_001 }],
        /entry 1 .*the chunk is 30000/,
      ],
      [
        'beyond the chunker maximum',
        [{ id: chunk.id, length: TEST_CHUNKER.max + 1 }],
        /more than the chunker maximum/,
      ],
    ];
    for (const [what, entries, message] of cases) {
      const r = await commit(srv.url, agent, session, manifest(entries));
      t.is(r.status, 400, `${what}: ${r.bytes.toString()}`);
      t.is(r.json.code, 'InvalidInput', what);
      t.regex(r.json.message, message, what);
    }
    t.is((await call(srv.url, agent, 'GET', '/v1/snapshots')).json.snapshots.length, snapshots);
    // The session is still usable, and an honest manifest of the same chunks commits.
    t.is((await putChunk(srv.url, agent, session, chunk)).status, 200);
    t.is((await commit(srv.url, agent, session, manifest([real(chunk), real(other)]))).status, 201);
  },
);

test.serial('unreadable ranges must lie inside the image, in order, without overlapping', async (t) => {
  const entries = [real(chunk), real(other)];
  const size = 70_000;
  const refused: [string, [number, number][]][] = [
    ['beyond the image', [[size - 10, 20]]],
    ['far beyond the image', [[2 ** 40, 512]]],
    ['empty', [[0, 0]]],
    [
      'overlapping',
      [
        [0, 100],
        [50, 100],
      ],
    ],
    [
      'out of order',
      [
        [1000, 10],
        [0, 10],
      ],
    ],
  ];
  const session = await openSession(srv.url, agent, 'mc1');
  for (const [what, unreadable] of refused) {
    const r = await commit(srv.url, agent, session, manifest(entries, { unreadable }));
    t.is(r.status, 400, `${what}: ${r.bytes.toString()}`);
    t.is(r.json.code, 'InvalidInput', what);
    t.regex(r.json.message, /unreadable range/, what);
  }
  const ok = await commit(
    srv.url,
    agent,
    session,
    manifest(entries, {
      unreadable: [
        [0, 512],
        [512, 512],
        [size - 512, 512],
      ],
    }),
  );
  t.is(ok.status, 201, ok.bytes.toString());
  t.deepEqual(ok.json.snapshot.unreadable, [
    [0, 512],
    [512, 512],
    [size - 512, 512],
  ]);
});

test.serial('verify reports a stored manifest that gives a chunk a wrong length', async (t) => {
  t.true((await runVerify()).ok);
  // As an older server may have accepted them: written straight into storage, adopted at the next start
  // (the rebuilt index learns the chunk's length from its stored header, since the manifests disagree).
  const huge = randomBytes(32).toString('hex');
  const short = randomBytes(32).toString('hex');
  const planted: [string, { id: string; length: number }[]][] = [
    [huge, [real(other), { id: chunk.id, length: 4294967295 }]],
    [short, [{ id: chunk.id, length: 39_999 }]],
  ];
  const objects = (srv.repo as Repository).storedObjects;
  for (const [id, entries] of planted)
    await srv.storage.put(
      snapshotKey(id),
      objects.sealManifest(snapshotKey(id), manifest(entries, { id, tenant: 'default' })),
    );
  await srv.stop();
  srv = await startTestServer({ dataDir: path.join(dir, 'data') });
  const report = await runVerify();
  t.false(report.ok);
  const bad = new Map(report.badManifests.map((m) => [m.snapshot, m.detail]));
  t.deepEqual([...bad.keys()].sort(), [huge, short].sort());
  t.regex(
    bad.get(huge) ?? '',
    /1 entries .*entry 1 gives chunk [0-9a-f]{64} 4294967295 bytes, more than the chunker maximum/,
  );
  t.regex(
    bad.get(short) ?? '',
    /1 entries .*entry 0 gives chunk [0-9a-f]{64} 39999 bytes; the chunk is 40000/,
  );
  t.deepEqual(report.problems, []);
});
