import test from 'ava';
import zstdBinding from 'zstd-napi/binding.js';
import { DiskvaultClient } from '../../agent/client.js';
import { decodeStoredChunk, encodeStoredChunk } from '../../repo-engine/chunk-format.js';
import type { Repository } from '../../repo-engine/repository.js';
import type { VerifyReport } from '../../repo-engine/types.js';
import {
  backup,
  call,
  chunkOf,
  missingFor,
  openSession,
  type TestChunk,
  zstd,
} from '../helpers/api-client.js';
import { startTestServer, type TestServer } from '../helpers/server.js';

/**
 * Cross-tenant chunk poisoning: a tenant uploads a chunk everybody has (an OS file) in a zstd form that
 * hashes right but that readers decode differently (several frames, no declared size, trailing frames).
 * Whatever form an upload takes, what the server stores decodes to exactly the chunk for every reader; a
 * bad copy already in storage (as an older server may have left it) is found, reported missing so the next
 * backup uploads it again, replaced by that upload, and verify says which snapshots were healed.
 */
let srv: TestServer;
let tokenA: string;
let tokenB: string;
let tokenC: string;
const SIZE = 250 * 1024;

test.before(async () => {
  srv = await startTestServer();
  tokenA = await srv.makeToken('agent', ['pa-web1'], 'tenant-a');
  tokenB = await srv.makeToken('agent', ['pb-web1'], 'tenant-b');
  tokenC = await srv.makeToken('agent', ['pc-web1'], 'tenant-c');
});

test.after.always(async () => {
  await srv?.stop();
});

/** zstd(first 1000 bytes) + zstd(the rest): hashes right when decoded whole, its first frame claims 1000. */
const twoFrames = (data: Buffer) => Buffer.concat([zstd(data.subarray(0, 1000)), zstd(data.subarray(1000))]);

/** One valid frame of raw blocks that does not declare its content size (built by hand, RFC 8878). */
function sizelessFrame(data: Buffer): Buffer {
  const parts: Buffer[] = [Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x00, (18 - 10) << 3])];
  for (let at = 0; at < data.length; at += 128 * 1024) {
    const block = data.subarray(at, Math.min(data.length, at + 128 * 1024));
    const last = at + block.length >= data.length ? 1 : 0;
    const head = Buffer.alloc(3);
    head.writeUIntLE((block.length << 3) | last, 0, 3); // block type 0: raw
    parts.push(head, block);
  }
  return Buffer.concat(parts);
}

/** A good frame followed by a skippable frame. */
const trailingSkippable = (data: Buffer) => {
  const skip = Buffer.alloc(16);
  skip.writeUInt32LE(0x184d2a50, 0);
  skip.writeUInt32LE(8, 4);
  return Buffer.concat([zstd(data), skip]);
};

async function putForm(token: string, session: string, c: TestChunk, body: Buffer) {
  return call(srv.url, token, 'PUT', `/v1/chunks/${c.id}?session=${session}`, {
    body,
    headers: { 'content-type': 'application/octet-stream', 'content-encoding': 'zstd' },
  });
}

/** The stored object must be raw, or one frame declaring the chunk's length, decoding to the chunk. */
async function assertStoredCanonically(t: import('ava').ExecutionContext, c: TestChunk, what: string) {
  const objects = (srv.repo as Repository).storedObjects;
  const key = objects.chunkKey(c.id);
  const stored = decodeStoredChunk(
    objects.openChunk(key, await srv.storage.getBytes(key), c.id).stored,
    c.id,
  );
  t.is(stored.rawLength, c.data.length, what);
  if (stored.encoding === 'zstd') {
    t.is(stored.payload.readUInt32LE(0), 0xfd2fb528, `${what}: a zstd frame`);
    t.is(zstdBinding.getFrameContentSize(stored.payload), c.data.length, `${what}: declares the length`);
    t.is(zstdBinding.findFrameCompressedSize(stored.payload), stored.payload.length, `${what}: one frame`);
  } else t.true(stored.payload.equals(c.data), what);
}

/** What a restore does: the agent's client fetches the stored payload, decodes it within its length, hashes. */
async function restoreChunk(token: string, id: string): Promise<Buffer> {
  const client = new DiskvaultClient({ server: srv.url, token });
  try {
    return await client.getChunk(id);
  } finally {
    client.close();
  }
}

async function runVerify(readData: boolean): Promise<VerifyReport> {
  const started = await call(srv.url, srv.adminToken, 'POST', '/v1/verify', { json: { readData } });
  let job = started.json.job;
  const deadline = Date.now() + 30_000;
  while (job.state === 'running' && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
    job = (await call(srv.url, srv.adminToken, 'GET', `/v1/jobs/${job.id}`)).json.job;
  }
  if (job.state !== 'done') throw new Error(`verify: ${JSON.stringify(job)}`);
  return job.result;
}

/** Overwrites a stored chunk directly in storage with two frames and a header claiming the full length. */
async function poisonInStorage(c: TestChunk): Promise<void> {
  const objects = (srv.repo as Repository).storedObjects;
  await srv.storage.put(
    objects.chunkKey(c.id),
    objects.sealChunk(c.id, [encodeStoredChunk('zstd', c.data.length, twoFrames(c.data))]),
  );
}

test.serial(
  'every zstd form an upload may take is stored so that every reader decodes the chunk',
  async (t) => {
    const session = await openSession(srv.url, tokenB, 'pb-web1');
    const forms: [string, (d: Buffer) => Buffer][] = [
      ['two frames', twoFrames],
      ['a frame without its size', sizelessFrame],
      ['a frame and a skippable frame', trailingSkippable],
      ['one canonical frame', zstd],
    ];
    for (const [what, form] of forms) {
      const c = chunkOf(`form-${what}`, SIZE);
      const r = await putForm(tokenB, session, c, form(c.data));
      t.is(r.status, 201, `${what}: ${r.bytes.toString()}`);
      await assertStoredCanonically(t, c, what);
      // B's upload, read by A after A's own backup of the same bytes (the scenario).
      await backup(srv.url, tokenA, 'pa-web1', 'sda', [c]);
      t.true((await restoreChunk(tokenA, c.id)).equals(c.data), what);
    }
  },
);

test.serial(
  'a poisoned copy already in storage is found by a read, reported missing, healed by the next backup and reported by verify',
  async (t) => {
    const x = chunkOf('poisoned-x', SIZE);
    const y = chunkOf('poisoned-y', SIZE);
    const s1 = (await backup(srv.url, tokenA, 'pa-web1', 'sdb', [x, y])).snapshot.id;
    const s2 = (await backup(srv.url, tokenA, 'pa-web1', 'sdb', [y, x])).snapshot.id;
    await poisonInStorage(x);

    // A restore finds it: the agent's decoder refuses the copy.
    const failed = await t.throwsAsync(restoreChunk(tokenA, x.id));
    t.regex(failed?.message ?? '', /corrupt|declares/i);
    // Known bad now: the missing query reports it to its owner, so the next backup uploads it.
    t.deepEqual(await missingFor(srv.url, tokenA, 'pa-web1', [x.id, y.id]), [x.id]);

    const before = await runVerify(true);
    t.false(before.ok);
    t.deepEqual(
      before.problems.map((p) => [p.chunk, p.kind, p.snapshots]),
      [[x.id, 'corrupt', [s1, s2].sort()]],
    );
    t.deepEqual(before.healed, []);

    const next = await backup(srv.url, tokenA, 'pa-web1', 'sdb', [x, y]);
    t.is(next.uploaded, 1);
    await assertStoredCanonically(t, x, 'the replaced copy');
    t.true((await restoreChunk(tokenA, x.id)).equals(x.data));
    t.deepEqual(await missingFor(srv.url, tokenA, 'pa-web1', [x.id, y.id]), []);

    const after = await runVerify(true);
    t.true(after.ok, JSON.stringify(after.problems));
    const s3 = next.snapshot.id;
    t.deepEqual(
      after.healed.map((h) => [h.chunk, h.snapshots]),
      [[x.id, [s1, s2, s3].sort()]],
    );
    t.regex(after.healed[0].detail, /zstd frame/);
    t.not(after.healed[0].healedAt, null);
    t.deepEqual(after.healedSnapshots, [s1, s2, s3].sort());
    // Reported once.
    t.deepEqual((await runVerify(false)).healed, []);
  },
);

test.serial('verify alone finds a poisoned copy, and the missing query then reports it', async (t) => {
  const w = chunkOf('poisoned-w', SIZE);
  const s = (await backup(srv.url, tokenA, 'pa-web1', 'sdc', [w])).snapshot.id;
  await poisonInStorage(w);
  const report = await runVerify(true);
  t.deepEqual(
    report.problems.map((p) => [p.chunk, p.kind, p.snapshots]),
    [[w.id, 'corrupt', [s]]],
  );
  t.deepEqual(await missingFor(srv.url, tokenA, 'pa-web1', [w.id]), [w.id]);
  // A quick verify (no data read) still reports the known damage.
  const quick = await runVerify(false);
  t.deepEqual(
    quick.problems.map((p) => [p.chunk, p.kind]),
    [[w.id, 'corrupt']],
  );
  await backup(srv.url, tokenA, 'pa-web1', 'sdc', [w]);
  const healed = await runVerify(false);
  t.true(healed.ok, JSON.stringify(healed.problems));
  t.deepEqual(
    healed.healed.map((h) => h.chunk),
    [w.id],
  );
});

test.serial(
  'another tenant uploading the chunk honestly replaces a bad copy instead of only claiming it',
  async (t) => {
    const z = chunkOf('poisoned-z', SIZE);
    await backup(srv.url, tokenA, 'pa-web1', 'sdd', [z]);
    await poisonInStorage(z);
    const session = await openSession(srv.url, tokenC, 'pc-web1');
    const r = await putForm(tokenC, session, z, zstd(z.data));
    t.is(r.status, 201);
    await assertStoredCanonically(t, z, 'after the honest upload');
    t.true((await restoreChunk(tokenA, z.id)).equals(z.data));
    t.true((await restoreChunk(tokenC, z.id)).equals(z.data));
  },
);
