import { createHash, randomBytes } from 'node:crypto';
import test from 'ava';
import type { BackupProgress } from '../../agent/backup/backup.js';
import { ChunkUploader, type CutChunks } from '../../agent/backup/chunk-uploader.js';
import { Committer } from '../../agent/backup/committer.js';
import { CutChain } from '../../agent/backup/cut-chain.js';
import { IdSet } from '../../agent/backup/id-set.js';
import { ManifestSpool } from '../../agent/backup/manifest-spool.js';
import { Semaphore } from '../../agent/backup/semaphore.js';
import { type Window, WindowRing } from '../../agent/backup/window-ring.js';
import { WorkerPool } from '../../agent/backup/worker-pool.js';
import { ChunkSender } from '../../agent/chunk-sender.js';
import { DiskvaultClient } from '../../agent/client.js';
import type { DiskvaultError } from '../../common/errors.js';
import { BufferRecycler } from '../../repo-engine/buffer-recycler.js';
import {
  MANIFEST_ENTRY_BYTES,
  MANIFEST_FORMAT_VERSION,
  type ManifestHeader,
} from '../../repo-engine/manifest-codec.js';
import { FailingSource } from '../helpers/failing-source.js';
import { startTestServer, TEST_CHUNKER, type TestServer } from '../helpers/server.js';

/** The backup pipeline's parts one by one: the window ring, the cut chain, the chunk uploader, the committer. */
const KiB = 1024;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const pad = TEST_CHUNKER.max;

function progress(): BackupProgress {
  return {
    phase: 'reading',
    bytesRead: 0,
    total: null,
    chunks: 0,
    newChunks: 0,
    newBytes: 0,
    knownBytes: 0,
    bytesUploaded: 0,
  };
}

async function withServer(fn: (s: TestServer, client: DiskvaultClient) => Promise<void>): Promise<void> {
  const server = await startTestServer({ storage: 'local' });
  const client = new DiskvaultClient({ server: server.url, token: await server.makeToken('agent', ['h']) });
  try {
    await fn(server, client);
  } finally {
    client.close();
    await server.stop();
  }
}

test('the ring reads windows behind the carry room, flags the end, records unreadable ranges', async (t) => {
  const data = randomBytes(2500 * KiB);
  const ring = new WindowRing(new FailingSource(data, { bad: [[1200 * KiB, 512]] }), pad, 1024 * KiB, 3);
  const a = await ring.read(0, 0);
  const b = await ring.read(1, 1024 * KiB);
  const c = await ring.read(2, 2048 * KiB);
  t.deepEqual([a.bytes, b.bytes, c.bytes], [1024 * KiB, 1024 * KiB, 452 * KiB]);
  t.deepEqual([a.eof, b.eof, c.eof], [false, false, true]);
  t.true(ring.buffers[a.slot].subarray(pad, pad + a.bytes).equals(data.subarray(0, 1024 * KiB)));
  t.deepEqual(ring.unreadable, [[1200 * KiB, 512]]);
  t.true(ring.buffers[b.slot].subarray(pad + 176 * KiB, pad + 176 * KiB + 512).equals(Buffer.alloc(512)));
  // The carry from a's last 100 KiB lands right in front of b's fresh bytes.
  ring.copyCarry(a, b, 924 * KiB);
  t.true(
    ring.buffers[b.slot]
      .subarray(pad - 100 * KiB, pad + 10)
      .equals(data.subarray(924 * KiB, 1024 * KiB + 10)),
  );
});

test('a read waits for a free slot, which the last hold on a window gives back', async (t) => {
  const ring = new WindowRing(new FailingSource(randomBytes(4096 * KiB)), pad, 1024 * KiB, 3);
  const held: Window[] = [];
  for (let i = 0; i < 3; i++) held.push(await ring.read(i, i * 1024 * KiB));
  for (const w of held) w.holds = 2;
  let fourth: Window | null = null;
  const waiting = ring.read(3, 3072 * KiB).then((w) => {
    fourth = w;
  });
  ring.release(held[1]);
  await new Promise((r) => setImmediate(r));
  t.is(fourth, null, 'one hold left: the slot is still in use');
  ring.release(held[1]);
  await waiting;
  t.is(fourth!.slot, held[1].slot);
});

test('the cut chain hands over chunks that tile the image in order, whatever the window size', async (t) => {
  const data = Buffer.concat([randomBytes(1500 * KiB), Buffer.alloc(700 * KiB), randomBytes(833 * KiB)]);
  for (const windowBytes of [pad, 600 * KiB, 4096 * KiB]) {
    const ring = new WindowRing(new FailingSource(data), pad, windowBytes, 3);
    const pool = new WorkerPool(2, { slots: ring.sabs, chunker: TEST_CHUNKER, warmBytes: 0 });
    const hasher = new WorkerPool(1, { slots: ring.sabs, chunker: TEST_CHUNKER, warmBytes: 0 });
    try {
      const chunks: string[] = [];
      let at = 0;
      let windows = 0;
      let read = 0;
      const chain = new CutChain({
        ring,
        pool,
        hasher,
        imageSize: data.length,
        process: async (w, from, cut: CutChunks) => {
          let start = from;
          for (const end of cut.ends) {
            chunks.push(sha(ring.buffers[w.slot].subarray(start, end)));
            at += end - start;
            start = end;
          }
        },
        onRead: (bytes) => {
          read += bytes;
        },
        onWindow: () => {
          windows++;
        },
      });
      await chain.run(Promise.resolve(null));
      t.is(at, data.length, `window ${windowBytes}`);
      t.is(read, data.length);
      t.is(windows, Math.ceil(data.length / windowBytes) + (data.length % windowBytes === 0 ? 1 : 0));
      t.is((await hasher.run({ type: 'image-digest' })).sha256, sha(data));
      t.is(chain.reusedBytes, 0);
      t.true(chunks.length >= Math.ceil(data.length / TEST_CHUNKER.max));
    } finally {
      await Promise.all([pool.close(), hasher.close()]);
    }
  }
});

test('a failure in one window stops the chain and is what run() throws', async (t) => {
  const data = randomBytes(3000 * KiB);
  const ring = new WindowRing(new FailingSource(data), pad, 512 * KiB, 3);
  const pool = new WorkerPool(1, { slots: ring.sabs, chunker: TEST_CHUNKER, warmBytes: 0 });
  const hasher = new WorkerPool(1, { slots: ring.sabs, chunker: TEST_CHUNKER, warmBytes: 0 });
  let processed = 0;
  try {
    const chain = new CutChain({
      ring,
      pool,
      hasher,
      imageSize: data.length,
      process: async () => {
        if (++processed === 2) throw new Error('upload lost');
      },
      onRead: () => {},
      onWindow: () => {},
    });
    const err = await t.throwsAsync(chain.run(Promise.resolve(null)));
    t.is(err!.message, 'upload lost');
    t.true(processed < 6, `stopped early (${processed} windows processed)`);
  } finally {
    await Promise.all([pool.close(), hasher.close()]);
  }
});

test('the uploader spools every chunk in order, uploads only what the server lacks, and each chunk once', async (t) => {
  await withServer(async (_server, client) => {
    const session = await client.createSession('h', 'd');
    const block = randomBytes(700 * KiB);
    const data = Buffer.concat([block, block, randomBytes(600 * KiB)]);
    const ring = new WindowRing(new FailingSource(data), pad, 4096 * KiB, 3);
    const pool = new WorkerPool(1, { slots: ring.sabs, chunker: TEST_CHUNKER, warmBytes: 0 });
    const spool = await ManifestSpool.create();
    try {
      const p = progress();
      const sender = await ChunkSender.open(client, session.id);
      t.true(sender.streaming, 'the test server offers the chunk stream');
      const uploader = new ChunkUploader({
        client,
        sessionId: session.id,
        sender,
        pool,
        spool,
        slotBuffers: ring.buffers,
        known: new IdSet(16),
        seeded: Promise.resolve(),
        uploads: new Semaphore(4),
        compressedBuffers: new BufferRecycler(),
        level: 1,
        progress: p,
        failed: () => false,
      });
      const w = await ring.read(0, 0);
      const cut = await pool.run({
        type: 'cut',
        slot: w.slot,
        from: pad,
        to: pad + w.bytes,
        final: true,
        imageOffset: 0,
        imageSize: data.length,
        previous: null,
      });
      await uploader.process(w, pad, cut);
      await sender.close();
      const batches: Buffer[] = [];
      for await (const b of spool.batches()) batches.push(b);
      const entries = Buffer.concat(batches);
      t.is(entries.length / MANIFEST_ENTRY_BYTES, cut.ends.length);
      const ids: string[] = [];
      let rebuilt = 0;
      for (let at = 0; at < entries.length; at += MANIFEST_ENTRY_BYTES) {
        ids.push(entries.toString('hex', at, at + 32));
        rebuilt += entries.readUInt32BE(at + 32);
      }
      t.is(rebuilt, data.length);
      const distinct = new Set(ids);
      t.true(distinct.size < ids.length, 'the repeated block gives repeated chunks');
      t.is(p.chunks, ids.length);
      t.is(p.newChunks, distinct.size);
      t.is(p.newBytes + p.knownBytes, data.length);
      const missing = await client.missing(session.id, [...distinct]);
      t.deepEqual(missing, []);
    } finally {
      await Promise.all([pool.close(), spool.close()]);
    }
  });
});

test('the committer uploads again what the server names as missing, then commits', async (t) => {
  await withServer(async (_server, client) => {
    const session = await client.createSession('h', 'd');
    const data = randomBytes(300 * KiB);
    const pieces = [data.subarray(0, 100 * KiB), data.subarray(100 * KiB)];
    const spool = await ManifestSpool.create();
    try {
      const entries = Buffer.alloc(2 * MANIFEST_ENTRY_BYTES);
      pieces.forEach((piece, i) => {
        Buffer.from(sha(piece), 'hex').copy(entries, i * MANIFEST_ENTRY_BYTES);
        entries.writeUInt32BE(piece.length, i * MANIFEST_ENTRY_BYTES + 32);
      });
      await spool.append(entries);
      // Only the first chunk is uploaded: the commit is answered with the second as missing.
      await client.putChunk(session.id, sha(pieces[0]), pieces[0], 'raw');
      const header: ManifestHeader = {
        formatVersion: MANIFEST_FORMAT_VERSION,
        host: 'h',
        disk: 'd',
        time: new Date().toISOString(),
        size: data.length,
        sha256: sha(data),
        chunker: session.chunker,
        tags: [],
        unreadable: [],
        sourceFormat: 'raw',
        chunkCount: 2,
      };
      const p = progress();
      const commit = (seekable: boolean) =>
        new Committer({
          client,
          source: new FailingSource(data, { seekable }),
          sessionId: session.id,
          spool,
          level: 1,
          concurrency: 2,
          attempts: 3,
          progress: p,
        }).commit(header);
      const piped = (await t.throwsAsync(commit(false))) as DiskvaultError;
      t.is(piped.code, 'Conflict');
      t.regex(piped.message, /lacks 1 chunks .* a piped image cannot be read again/);
      const snapshot = await commit(true);
      t.is(snapshot.size, data.length);
      t.is(p.newChunks, 1);
      t.is(p.newBytes, 200 * KiB);
    } finally {
      await spool.close();
    }
  });
});
