import { readdir, stat } from 'node:fs/promises';
import { type ClientRequest, type IncomingMessage, request } from 'node:http';
import path from 'node:path';
import test from 'ava';
import { type RunningService, startService } from '../../api/service.js';
import { createToken } from '../../api/token-store.js';
import { encodeEntry, encodeManifestHead, MANIFEST_ENTRY_BYTES } from '../../repo-engine/manifest-codec.js';
import { STREAM_SEGMENT_BYTES } from '../../repo-engine/object-crypto.js';
import { backup, call, chunkOf, commit, manifestFor, openSession } from '../helpers/api-client.js';
import { removeDir, tempDir } from '../helpers/reliability-harness.js';
import { TEST_CHUNKER } from '../helpers/server.js';

/**
 * A commit never holds its manifest whole: it is checked and written to storage piece by piece as the body
 * arrives (so memory holds one piece, whatever the manifest's size), and only a few commits run at once;
 * more wait for a turn or, beyond the queue, are refused with 503 and Retry-After. The timing side (how
 * long /v1/health waits during a million-entry commit) is measured by bench/commit-latency.ts, not here.
 */
let dir: string;
let service: RunningService;
let agent: string;
const chunk = chunkOf('streaming-commit', 40_000);
const DECLARED = 1_000_000;

test.before(async () => {
  dir = await tempDir('commit-streaming');
  service = await startService({
    host: '127.0.0.1',
    port: 0,
    dataDir: path.join(dir, 'data'),
    chunker: TEST_CHUNKER,
    log: () => {},
    server: { maxConcurrentCommits: 1, maxWaitingCommits: 1, commitWaitMs: 60_000 },
  });
  agent = (await createToken(path.join(dir, 'data'), { role: 'agent', hosts: ['st1', 'st2', 'st3'] })).token;
  for (const host of ['st1', 'st2', 'st3']) await backup(service.url, agent, host, 'sda', [chunk]);
});

test.after.always(async () => {
  await service?.stop(200);
  if (dir) await removeDir(dir);
});

/** The head of a manifest declaring DECLARED entries of `chunk`, of which only some will be sent. */
function head(host: string): Buffer {
  return encodeManifestHead({
    formatVersion: 1,
    host,
    disk: 'sda',
    time: new Date().toISOString(),
    size: DECLARED * chunk.data.length,
    sha256: '0'.repeat(64),
    chunker: TEST_CHUNKER,
    tags: [],
    unreadable: [],
    sourceFormat: 'raw',
    chunkCount: DECLARED,
  });
}

function entries(n: number, length = chunk.data.length): Buffer {
  const out = Buffer.alloc(n * MANIFEST_ENTRY_BYTES);
  for (let i = 0; i < n; i++) encodeEntry(chunk.id, length, out, i * MANIFEST_ENTRY_BYTES);
  return out;
}

/** A commit whose body is sent piece by piece (chunked transfer) and ended only when the test says so. */
function openCommit(session: string): {
  req: ClientRequest;
  answer: Promise<{ status: number; headers: IncomingMessage['headers']; body: string }>;
} {
  const u = new URL(service.url);
  const req = request({
    host: u.hostname,
    port: u.port,
    path: `/v1/sessions/${session}/commit`,
    method: 'POST',
    headers: {
      authorization: `Bearer ${agent}`,
      'content-type': 'application/x-diskvault-manifest',
      'transfer-encoding': 'chunked',
    },
  });
  const answer = new Promise<{ status: number; headers: IncomingMessage['headers']; body: string }>(
    (resolve, reject) => {
      req.on('response', (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      });
      req.on('error', reject);
    },
  );
  req.flushHeaders();
  return { req, answer };
}

/** Bytes in files under storage's snapshots/ folder (a manifest being written is a temp file there). */
async function snapshotFolderBytes(): Promise<number> {
  const folder = path.join(dir, 'data', 'storage', 'snapshots');
  let total = 0;
  for (const name of await readdir(folder).catch(() => [] as string[]))
    total += (await stat(path.join(folder, name)).catch(() => ({ size: 0 }))).size;
  return total;
}

async function until<T>(what: string, probe: () => Promise<T | undefined>, ms = 20_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const settled = <T>(p: Promise<T>) =>
  Promise.race([p.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 300))]);

test.serial('a commit is checked and written to storage while its body arrives, not after', async (t) => {
  const session = await openSession(service.url, agent, 'st1');
  const before = await snapshotFolderBytes();
  const { req, answer } = openCommit(session);
  req.write(head('st1'));
  const sent = 20_000;
  req.write(entries(sent));
  // The body is far from complete (a million entries declared), yet the entries sent are in storage, all
  // but the last sealed segment, which an encrypted repository writes once the next one begins.
  const expected = sent * MANIFEST_ENTRY_BYTES - STREAM_SEGMENT_BYTES;
  const written = await until('the manifest to reach storage', async () => {
    const bytes = (await snapshotFolderBytes()) - before;
    return bytes >= expected ? bytes : undefined;
  });
  t.true(written >= expected);
  t.false(await settled(answer), 'no answer before the body is complete');
  // A bad entry is refused as soon as it arrives, the rest of the body never sent.
  req.write(entries(1, chunk.data.length + 1));
  const refused = await until('the refusal', async () => ((await settled(answer)) ? answer : undefined));
  t.is(refused.status, 400, refused.body);
  t.regex(JSON.parse(refused.body).message, new RegExp(`entry ${sent} gives chunk`));
  req.destroy();
  // Nothing of the refused commit stays in storage.
  await until('the partial manifest to be removed', async () =>
    (await snapshotFolderBytes()) === before ? true : undefined,
  );
  t.is(
    (await call(service.url, agent, 'GET', '/v1/snapshots?host=st1')).json.snapshots.length,
    1,
    'only the snapshot made before',
  );
});

test.serial(
  'commits beyond the running and waiting bounds are refused with 503 and Retry-After',
  async (t) => {
    const [s1, s2, s3] = await Promise.all(
      ['st1', 'st2', 'st3'].map((h) => openSession(service.url, agent, h)),
    );
    // The first commit holds the one running slot while its body trickles in.
    const base = await snapshotFolderBytes();
    const first = openCommit(s1);
    first.req.write(head('st1'));
    first.req.write(entries(100));
    await until('the first commit to be running', async () =>
      (await snapshotFolderBytes()) > base ? true : undefined,
    );
    // The second waits its turn (the one waiting place); the third is refused at once.
    const second = commit(service.url, agent, s2, manifestFor('st2', 'sda', [chunk]));
    t.false(await settled(second), 'the second commit waits');
    const third = await commit(service.url, agent, s3, manifestFor('st3', 'sda', [chunk]));
    t.is(third.status, 503);
    t.is(third.json.code, 'Unavailable');
    t.is(third.headers.get('retry-after'), '15');
    t.false(await settled(second), 'still waiting');
    // The first ends (refused: its body is cut short of what it declared); the second then runs.
    first.req.end();
    t.is((await first.answer).status, 400);
    t.is((await second).status, 201);
    // Retried, the third goes through.
    t.is((await commit(service.url, agent, s3, manifestFor('st3', 'sda', [chunk]))).status, 201);
  },
);
