import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { encodeStoredChunk } from '../../repo-engine/chunk-format.js';
import { ChunkStore, chunkKey } from '../../repo-engine/chunk-store.js';
import type { StorageAdapter } from '../../storage-adapters/adapter.js';
import { openLocalStorage } from '../../storage-adapters/local.js';
import { deferred } from '../helpers/deferred.js';
import { hookedStorage } from '../helpers/hooked-storage.js';

/** Real local storage, with a count of the whole-object reads that reach it. */
async function countingStorage(t: import('ava').ExecutionContext) {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'dv-chunk-cache-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const local = await openLocalStorage(dir);
  const reads = new Map<string, number>();
  const storage = new Proxy(local, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver);
      if (prop !== 'getBytes' || typeof value !== 'function') return value;
      return (key: string, range?: unknown, alloc?: unknown) => {
        if (range === undefined) reads.set(key, (reads.get(key) ?? 0) + 1);
        return value.call(target, key, range, alloc);
      };
    },
  }) as StorageAdapter;
  return { storage, reads };
}

async function storeChunk(storage: StorageAdapter): Promise<string> {
  const raw = randomBytes(50_000);
  const id = createHash('sha256').update(raw).digest('hex');
  await storage.put(chunkKey(id), encodeStoredChunk('raw', raw.length, raw));
  return id;
}

test('a chunk read once is cached, and later reads never reach storage', async (t) => {
  const { storage, reads } = await countingStorage(t);
  const store = new ChunkStore(storage, 1 << 20, 64 << 20);
  const id = await storeChunk(storage);
  for (let i = 0; i < 5; i++) await store.readStoredUnverified(id);
  t.is(reads.get(chunkKey(id)), 1);
});

test('concurrent reads of one chunk share one storage read', async (t) => {
  const { storage, reads } = await countingStorage(t);
  const store = new ChunkStore(storage, 1 << 20, 64 << 20);
  const id = await storeChunk(storage);
  const got = await Promise.all(Array.from({ length: 6 }, () => store.readRaw(id)));
  t.is(reads.get(chunkKey(id)), 1);
  t.true(got.every((b) => b.equals(got[0])));
});

test('a forgotten chunk is read from storage again', async (t) => {
  const { storage, reads } = await countingStorage(t);
  const store = new ChunkStore(storage, 1 << 20, 64 << 20);
  const id = await storeChunk(storage);
  await store.readRaw(id);
  store.forget(id);
  await store.readRaw(id);
  await store.readRaw(id);
  t.is(reads.get(chunkKey(id)), 2);
});

test('a read under way when its chunk is forgotten answers its readers, but is not cached nor joined later', async (t) => {
  const { storage } = await countingStorage(t);
  const store = new ChunkStore(storage, 1 << 20, 64 << 20);
  const raw = randomBytes(50_000);
  const id = createHash('sha256').update(raw).digest('hex');
  const rotten = Buffer.from(raw);
  rotten[0] ^= 0xff;
  await storage.put(chunkKey(id), encodeStoredChunk('raw', rotten.length, rotten));
  // Storage answers the first read only once the object has been replaced: the read saw the old object.
  const started = deferred();
  const finish = deferred();
  let first = true;
  const slow = hookedStorage(storage, {
    async getBytes(key, range, alloc) {
      const bytes = await storage.getBytes(key, range, alloc);
      if (first) {
        first = false;
        started.resolve();
        await finish.promise;
      }
      return bytes;
    },
  });
  const slowStore = new ChunkStore(slow, 1 << 20, 64 << 20);
  const early = slowStore.readStoredUnverified(id);
  await started.promise;
  // The copy is replaced (as an upload of a damaged chunk does) while that read is under way.
  await slowStore.write({
    id,
    rawLength: raw.length,
    bytes: encodeStoredChunk('raw', raw.length, raw),
  });
  const late = slowStore.readStoredUnverified(id);
  finish.resolve();
  t.true((await early).payload.equals(rotten), 'the early reader gets what its read found');
  t.true((await late).payload.equals(raw), 'a reader after the replacement does not join the old read');
  t.true((await slowStore.readRaw(id)).equals(raw), 'the old bytes were not cached');
  t.true((await store.readRaw(id)).equals(raw));
});

/** Chunks of one size, so their objects fall in one size class of the read buffers. */
async function storeChunks(storage: StorageAdapter, n: number): Promise<{ id: string; stored: Buffer }[]> {
  return Promise.all(
    Array.from({ length: n }, async () => {
      const id = await storeChunk(storage);
      return { id, stored: await storage.getBytes(chunkKey(id)) };
    }),
  );
}

test("a leased chunk's memory is reused for another read only once its lease ends", async (t) => {
  const { storage } = await countingStorage(t);
  // No cache: a buffer goes round as soon as its last lease ends.
  const store = new ChunkStore(storage, 1 << 20, 1);
  const [a, b, c] = await storeChunks(storage, 3);
  const la = await store.leaseStoredUnverified(a.id);
  const lb = await store.leaseStoredUnverified(b.id);
  t.not(lb.payload.buffer, la.payload.buffer);
  t.is(store.reusedReadBuffers, 0);
  t.deepEqual(la.payload, a.stored.subarray(9), 'the lease still holds its bytes');
  la.release(true);
  la.release(true); // idempotent: one release, not two
  const lc = await store.leaseStoredUnverified(c.id);
  t.is(lc.payload.buffer, la.payload.buffer, "c is read into a's memory");
  t.is(store.reusedReadBuffers, 1);
  t.deepEqual(lc.payload, c.stored.subarray(9));
  t.deepEqual(lb.payload, b.stored.subarray(9), 'the other lease is untouched');
});

test('one read shared by two leases is reused only after both end', async (t) => {
  const { storage } = await countingStorage(t);
  // No cache: a buffer goes round as soon as its last lease ends.
  const store = new ChunkStore(storage, 1 << 20, 1);
  const [a, b, c] = await storeChunks(storage, 3);
  const [l1, l2] = await Promise.all([store.leaseStoredUnverified(a.id), store.leaseStoredUnverified(a.id)]);
  t.is(l1.payload.buffer, l2.payload.buffer, 'one read');
  l1.release(true);
  const lb = await store.leaseStoredUnverified(b.id);
  t.not(lb.payload.buffer, l2.payload.buffer);
  t.deepEqual(l2.payload, a.stored.subarray(9));
  l2.release(true);
  const lc = await store.leaseStoredUnverified(c.id);
  t.is(lc.payload.buffer, l2.payload.buffer);
});

test('memory released as not reusable, or kept by a reader, is never reused', async (t) => {
  const { storage } = await countingStorage(t);
  // No cache: a buffer goes round as soon as its last lease ends.
  const store = new ChunkStore(storage, 1 << 20, 1);
  const [a, b, c, d] = await storeChunks(storage, 4);
  // A send cut off may still read its bytes from a socket's queue.
  const la = await store.leaseStoredUnverified(a.id);
  la.release(false);
  // A lease and a keeping reader share one read: the keeper may hold the bytes for ever.
  const [lb, kept] = await Promise.all([store.leaseStoredUnverified(b.id), store.readStoredUnverified(b.id)]);
  t.is(lb.payload.buffer, kept.payload.buffer);
  lb.release(true);
  const lc = await store.leaseStoredUnverified(c.id);
  const ld = await store.leaseStoredUnverified(d.id);
  t.is(store.reusedReadBuffers, 0);
  for (const l of [lc, ld])
    t.true(l.payload.buffer !== la.payload.buffer && l.payload.buffer !== kept.payload.buffer);
  t.deepEqual(kept.payload, b.stored.subarray(9));
});

test('a chunk read once waits in probation, and its memory goes round once it falls out', async (t) => {
  const { storage, reads } = await countingStorage(t);
  // Probation is an eighth of the cache: here one 256 KiB buffer, the size class of these objects.
  const store = new ChunkStore(storage, 1 << 20, 8 * 256 * 1024);
  const [a, b, c, d] = await storeChunks(storage, 4);
  const before = reads.get(chunkKey(a.id)) ?? 0;
  const la = await store.leaseStoredUnverified(a.id);
  la.release(true);
  const again = await store.leaseStoredUnverified(a.id);
  t.is(again.payload.buffer, la.payload.buffer, 'read again from probation, not from storage');
  t.is(reads.get(chunkKey(a.id)), before + 1);
  again.release(true);
  const lb = await store.leaseStoredUnverified(b.id);
  lb.release(true);
  // c is read while b still waits in probation; c taking its place there lets b's memory go round.
  (await store.leaseStoredUnverified(c.id)).release(true);
  t.is(store.reusedReadBuffers, 0);
  const ld = await store.leaseStoredUnverified(d.id);
  t.is(store.reusedReadBuffers, 1);
  t.is(ld.payload.buffer, lb.payload.buffer);
  t.deepEqual(ld.payload, d.stored.subarray(9));
});

test("a cached chunk's memory is not reused while it is cached", async (t) => {
  const { storage, reads } = await countingStorage(t);
  const store = new ChunkStore(storage, 1 << 20, 64 << 20);
  const [a, b] = await storeChunks(storage, 2);
  const before = reads.get(chunkKey(a.id)) ?? 0;
  (await store.leaseStoredUnverified(a.id)).release(true);
  const cached = await store.leaseStoredUnverified(a.id); // the second read: cached
  cached.release(true);
  const lb = await store.leaseStoredUnverified(b.id);
  t.not(lb.payload.buffer, cached.payload.buffer);
  const again = await store.readStoredUnverified(a.id);
  t.is(reads.get(chunkKey(a.id)), before + 1, 'read from storage once, then served from the cache');
  t.deepEqual(again.payload, a.stored.subarray(9));
});
