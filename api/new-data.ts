import { MANIFEST_ENTRY_BYTES, ManifestReader } from '../repo-engine/manifest-codec.js';
import type { RepositoryApi } from '../repo-engine/types.js';

/**
 * What a snapshot added over the one before it on the same disk: the distinct chunks its manifest names
 * that the previous manifest does not, and their raw bytes. That is what an incremental backup uploads
 * (the agent's known-set is the previous snapshot), so it is the "new data that night" an admin watches.
 *
 * Chunks are compared by the first 8 bytes of their SHA-256 ids, held in typed arrays: about 30 bytes an
 * entry at the peak however large the disk (a 2 TiB disk's two million chunks in some 60 MiB), where a Set
 * of hex strings would take ~150. Two different chunks sharing 64 bits is a 1-in-2^64 event that would only shift a displayed
 * figure by one chunk.
 */
export interface NewData {
  newChunks: number;
  newBytes: number;
}

async function readPrefixes(
  repo: RepositoryApi,
  id: string,
): Promise<{ keys: BigUint64Array; lengths: Uint32Array }> {
  const reader = await ManifestReader.open(await repo.openManifest(id), 'storage');
  const n = reader.header.chunkCount;
  const keys = new BigUint64Array(n);
  const lengths = new Uint32Array(n);
  let i = 0;
  for await (const batch of reader.entryBatches()) {
    for (let at = 0; at < batch.length; at += MANIFEST_ENTRY_BYTES, i++) {
      keys[i] = batch.readBigUInt64BE(at);
      lengths[i] = batch.readUInt32BE(at + 32);
    }
  }
  return { keys, lengths };
}

/** The first position of `key` in `sorted` (which holds it). */
function firstIndex(sorted: BigUint64Array, key: bigint): number {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (sorted[mid] < key) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function contains(sorted: BigUint64Array, key: bigint): boolean {
  let lo = 0;
  let hi = sorted.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const v = sorted[mid];
    if (v === key) return true;
    if (v < key) lo = mid + 1;
    else hi = mid - 1;
  }
  return false;
}

/** New data of `id` over `previousId` (every distinct chunk of `id` when there is no previous snapshot). */
export async function computeNewData(
  repo: RepositoryApi,
  id: string,
  previousId: string | undefined,
): Promise<NewData> {
  const before = previousId ? (await readPrefixes(repo, previousId)).keys.sort() : new BigUint64Array(0);
  const cur = await readPrefixes(repo, id);
  // The entries not in the previous manifest, each distinct one counted once (an image repeats chunks:
  // zeros above all): their ids sorted (a native typed-array sort), and a flag per distinct id.
  const fresh = new BigUint64Array(cur.keys.length);
  const freshLengths = new Uint32Array(cur.keys.length);
  let n = 0;
  for (let i = 0; i < cur.keys.length; i++) {
    if (contains(before, cur.keys[i])) continue;
    fresh[n] = cur.keys[i];
    freshLengths[n++] = cur.lengths[i];
  }
  const sorted = fresh.slice(0, n).sort();
  const counted = new Uint8Array(n);
  let newChunks = 0;
  let newBytes = 0;
  for (let k = 0; k < n; k++) {
    const at = firstIndex(sorted, fresh[k]);
    if (counted[at]) continue;
    counted[at] = 1;
    newChunks++;
    newBytes += freshLengths[k];
  }
  return { newChunks, newBytes };
}

/**
 * Remembers answers by (previous, snapshot) pair: manifests never change, and a forget that removes the
 * previous snapshot changes the pair. Concurrent asks for one pair share one computation.
 */
export class NewDataCache {
  private readonly done = new Map<string, NewData>();
  private readonly running = new Map<string, Promise<NewData>>();

  constructor(
    private readonly repo: RepositoryApi,
    private readonly max = 20_000,
  ) {}

  get(id: string, previousId: string | undefined): Promise<NewData> {
    const key = `${previousId ?? ''}:${id}`;
    const hit = this.done.get(key);
    if (hit) {
      // Map order is insertion order: re-inserting makes this the most recently used.
      this.done.delete(key);
      this.done.set(key, hit);
      return Promise.resolve(hit);
    }
    let work = this.running.get(key);
    if (!work) {
      work = computeNewData(this.repo, id, previousId).then(
        (v) => {
          this.running.delete(key);
          this.done.set(key, v);
          if (this.done.size > this.max) this.done.delete(this.done.keys().next().value as string);
          return v;
        },
        (err) => {
          this.running.delete(key);
          throw err;
        },
      );
      this.running.set(key, work);
    }
    return work;
  }
}
