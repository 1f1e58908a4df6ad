import { LRUCache } from 'lru-cache';
import { ConflictError, CorruptError } from '../../common/errors.js';
import { ID_BYTES, MANIFEST_ENTRY_BYTES, ManifestReader } from '../../repo-engine/manifest-codec.js';
import type { RepositoryApi, SnapshotInfo } from '../../repo-engine/types.js';

/**
 * A snapshot's chunk list laid out for random access: where each chunk starts (a Float64Array, exact for
 * any disk size) and its id (32 bytes), 40 bytes a chunk, found by binary search. A Range request is then a
 * lookup instead of a walk through the manifest, which matters when qemu reads a disk as thousands of
 * small ranges.
 */
export class ImageIndex {
  private constructor(
    readonly snapshot: string,
    /** offsets[i] is where chunk i starts; offsets[count] is the image size. */
    private readonly offsets: Float64Array,
    private readonly ids: Buffer,
  ) {}

  /** `snap`'s chunk list; Conflict when the manifest stored under its id is another image's by now. */
  static async load(repo: RepositoryApi, snap: SnapshotInfo): Promise<ImageIndex> {
    const snapshot = snap.id;
    const reader = await ManifestReader.open(await repo.openManifest(snapshot), 'storage');
    if (reader.header.sha256 !== snap.sha256 || reader.header.size !== snap.size)
      throw new ConflictError(`snapshot ${snapshot} was replaced while its image was being opened`);
    const count = reader.header.chunkCount;
    const offsets = new Float64Array(count + 1);
    const ids = Buffer.allocUnsafe(count * ID_BYTES);
    let i = 0;
    let at = 0;
    // The reader checks the count, the lengths' sum and the trailer hash; past its checks this cannot fail.
    for await (const batch of reader.entryBatches()) {
      for (let e = 0; e < batch.length; e += MANIFEST_ENTRY_BYTES, i++) {
        if (i >= count) throw new CorruptError(`manifest of ${snapshot} lists more than ${count} chunks`);
        batch.copy(ids, i * ID_BYTES, e, e + ID_BYTES);
        offsets[i] = at;
        at += batch.readUInt32BE(e + ID_BYTES);
      }
    }
    offsets[count] = at;
    return new ImageIndex(snapshot, offsets, ids);
  }

  get chunkCount(): number {
    return this.offsets.length - 1;
  }

  get size(): number {
    return this.offsets[this.offsets.length - 1];
  }

  /** Memory held, for the cache's budget. */
  get bytes(): number {
    return this.offsets.byteLength + this.ids.length;
  }

  start(i: number): number {
    return this.offsets[i];
  }

  end(i: number): number {
    return this.offsets[i + 1];
  }

  id(i: number): string {
    return this.ids.toString('hex', i * ID_BYTES, (i + 1) * ID_BYTES);
  }

  /** The index of the chunk holding byte `offset` (0 <= offset < size). */
  chunkAt(offset: number): number {
    let lo = 0;
    let hi = this.chunkCount - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (this.offsets[mid] <= offset) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }
}

/**
 * Indexes of recently served snapshots, bounded in bytes (a 2 TiB disk in 1 MiB chunks is 80 MiB); loads of
 * one snapshot at the same time share one manifest read. A snapshot is immutable, but its id is not its
 * alone forever: once deleted, an id may be committed again (a commit may ask for its id, as sync's do),
 * perhaps by another tenant. So an index is kept under the id together with the image's SHA-256 and the
 * time the server received the commit, and an id committed again is loaded afresh, never served from the
 * chunk list of the snapshot that had it before.
 */
export class ImageIndexCache {
  private readonly cache: LRUCache<string, ImageIndex>;
  private readonly loading = new Map<string, Promise<ImageIndex>>();

  constructor(
    private readonly repo: RepositoryApi,
    maxBytes = 256 * 1024 * 1024,
  ) {
    this.cache = new LRUCache<string, ImageIndex>({
      maxSize: maxBytes,
      sizeCalculation: (ix) => Math.max(1, ix.bytes),
    });
  }

  get(snap: SnapshotInfo): Promise<ImageIndex> {
    const key = `${snap.id}/${snap.sha256}/${snap.receivedAt}`;
    const hit = this.cache.get(key);
    if (hit) return Promise.resolve(hit);
    let running = this.loading.get(key);
    if (!running) {
      running = ImageIndex.load(this.repo, snap)
        .then((ix) => {
          // One larger than the whole budget is served, just not kept.
          if (ix.bytes <= this.cache.maxSize) this.cache.set(key, ix);
          return ix;
        })
        .finally(() => this.loading.delete(key));
      this.loading.set(key, running);
    }
    return running;
  }
}
