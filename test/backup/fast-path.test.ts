import { createHash, randomBytes } from 'node:crypto';
import test from 'ava';
import fastcdc from 'fastcdc-wasm';
import { runBackup } from '../../agent/backup/backup.js';
import { DiskvaultClient } from '../../agent/client.js';
import { readSnapshot } from '../helpers/backup-e2e.js';
import { FailingSource } from '../helpers/failing-source.js';
import { startTestServer, TEST_CHUNKER } from '../helpers/server.js';

/**
 * The second night of a disk is cut by checking the first night's chunks (agent/backup/window-cutter.ts).
 * Its snapshot must be exactly the one a backup with no previous snapshot makes of the same bytes.
 * Test server chunker: 16/64/256 KiB.
 */
const KiB = 1024;
const MiB = 1024 * KiB;

function sha(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

/** start:end:id of each chunk one fastcdc pass over the whole image makes. */
function chunksOf(data: Buffer): string[] {
  const { min, avg, max } = TEST_CHUNKER;
  const cuts = Array.from(fastcdc.get_chunks(data, min, avg, max));
  return cuts.slice(1).map((end, i) => `${cuts[i]}:${end}:${sha(data.subarray(cuts[i], end))}`);
}

/**
 * Bytes the fast path must take from last night: chunks at the same place with the same bytes, except where
 * fastcdc's view of the bytes left (min(left, max)) differs because the disk changed size.
 */
function survivingBytes(before: Buffer, after: Buffer): number {
  const old = new Set(chunksOf(before));
  const { max } = TEST_CHUNKER;
  let bytes = 0;
  for (const c of chunksOf(after)) {
    const [start, end] = c.split(':').map(Number);
    const sameLeft = Math.min(after.length - start, max) === Math.min(before.length - start, max);
    if (old.has(c) && sameLeft) bytes += end - start;
  }
  return bytes;
}

/** Random stretches, zero runs and a repeated block, like a filesystem image. */
function diskLike(size: number): Buffer {
  const out = Buffer.alloc(size);
  const block = randomBytes(300 * KiB);
  for (let at = 0, k = 0; at < size; k++) {
    const len = Math.min(size - at, 200 * KiB + ((k * 104729) % (700 * KiB)));
    if (k % 4 === 1) randomBytes(len).copy(out, at);
    else if (k % 4 === 3) block.copy(out, at, 0, Math.min(len, block.length));
    at += len;
  }
  return out;
}

/** A night's in-place writes: rewritten blocks, a freed extent, a byte at a window edge, the last sector. */
function nightOfWrites(before: Buffer): Buffer {
  const after = Buffer.from(before);
  randomBytes(4096).copy(after, 1 * MiB + 123);
  randomBytes(64 * KiB).copy(after, 3 * MiB);
  after.fill(0, 5 * MiB + 7, 5 * MiB + 300 * KiB);
  after[2 * MiB - 1] ^= 0xff;
  randomBytes(512).copy(after, after.length - 512);
  return after;
}

for (const [name, change] of [
  ['in place', (b: Buffer) => b],
  ['in place and grown by less than one chunk', (b: Buffer) => Buffer.concat([b, randomBytes(10 * KiB)])],
] as const) {
  test(`a disk rewritten ${name} gets the same snapshot via the previous-manifest fast path as without it`, async (t) => {
    const server = await startTestServer({ storage: 'local' });
    const client = new DiskvaultClient({
      server: server.url,
      token: await server.makeToken('agent', ['host1']),
    });
    try {
      const night0 = diskLike(8 * MiB + 4321);
      const night1 = change(nightOfWrites(night0));
      const backup = (data: Buffer, disk: string) =>
        runBackup({ client, source: new FailingSource(data), host: 'host1', disk, windowBytes: MiB });
      await backup(night0, 'sda');
      const fast = await backup(night1, 'sda');
      const full = await backup(night1, 'fresh');
      t.is(full.reusedBytes, 0, 'a disk with no previous snapshot is cut by fastcdc alone');
      // Every chunk that survived the night must have skipped fastcdc, and that is most of the disk.
      t.is(fast.reusedBytes, survivingBytes(night0, night1));
      t.true(fast.reusedBytes > night1.length / 2, `reused ${fast.reusedBytes} of ${night1.length}`);
      t.is(fast.sha256, sha(night1));
      const a = await readSnapshot(client, fast.snapshot.id);
      const b = await readSnapshot(client, full.snapshot.id);
      t.deepEqual(a.entries, b.entries);
      // and the ids are the bytes' hashes, chunk by chunk
      let at = 0;
      for (const e of a.entries) {
        t.is(e.id, sha(night1.subarray(at, at + e.length)));
        at += e.length;
      }
      t.is(at, night1.length);
    } finally {
      client.close();
      await server.stop();
    }
  });
}
