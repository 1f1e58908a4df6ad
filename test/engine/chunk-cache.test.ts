import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { encodeStoredChunk } from '../../repo-engine/chunk-format.js';
import { ChunkStore, chunkKey } from '../../repo-engine/chunk-store.js';
import type { StorageAdapter } from '../../storage-adapters/adapter.js';
import { openLocalStorage } from '../../storage-adapters/local.js';

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
      return (key: string, range?: unknown) => {
        if (range === undefined) reads.set(key, (reads.get(key) ?? 0) + 1);
        return value.call(target, key, range);
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
