import { LRUCache } from 'lru-cache';
import { InvalidInputError } from '../../common/errors.js';
import { MANIFEST_ENTRY_BYTES, type ManifestHeader } from '../../repo-engine/manifest-codec.js';
import { ZeroChunks } from '../restore/zero-chunks.js';

/** Where a chunk's raw bytes come from, already checked against the id (in `diskvault nbd`, the restore's decode pool). */
export type VerifiedChunkSource = (id: string, length: number) => Promise<Buffer>;

/**
 * A snapshot as a random-access disk: any byte range, read from the chunks that hold it. The chunk list is
 * kept as offsets and ids in two flat arrays (40 bytes per chunk: 80 MiB for a 2 TiB disk cut into 1 MiB
 * chunks), found by binary search. Chunks come from the repository one by one, are checked against
 * their id by the source, and stay in a cache bounded by bytes, so a filesystem's metadata, read over and over
 * while a directory is browsed, costs one download. Zero chunks are never downloaded.
 */
export class SnapshotImage {
  private readonly cache: LRUCache<string, Buffer>;
  private readonly inFlight = new Map<string, Promise<Buffer>>();
  private readonly zeros: ZeroChunks;

  private constructor(
    readonly header: ManifestHeader,
    /** offsets[i] is where chunk i starts; offsets[count] is the image size. */
    private readonly offsets: Float64Array,
    private readonly ids: Buffer,
    private readonly source: VerifiedChunkSource,
    cacheBytes: number,
  ) {
    this.cache = new LRUCache<string, Buffer>({
      maxSize: Math.max(cacheBytes, header.chunker.max),
      sizeCalculation: (b) => Math.max(1, b.length),
    });
    this.zeros = new ZeroChunks([header.chunker.max], Math.min(Math.max(header.chunker.max, 1), 64 << 20));
  }

  /** Reads the whole chunk list (the manifest's entries, in image order) and checks it adds up to the size. */
  static async load(
    header: ManifestHeader,
    entryBatches: AsyncIterable<Buffer>,
    source: VerifiedChunkSource,
    cacheBytes = 256 * 1024 * 1024,
  ): Promise<SnapshotImage> {
    const count = header.chunkCount;
    const offsets = new Float64Array(count + 1);
    const ids = Buffer.allocUnsafe(count * 32);
    let i = 0;
    let at = 0;
    for await (const batch of entryBatches) {
      for (let e = 0; e < batch.length; e += MANIFEST_ENTRY_BYTES, i++) {
        if (i >= count) throw new InvalidInputError(`the manifest lists more than its ${count} chunks`);
        batch.copy(ids, i * 32, e, e + 32);
        offsets[i] = at;
        at += batch.readUInt32BE(e + 32);
      }
    }
    if (i !== count || at !== header.size)
      throw new InvalidInputError(
        `the manifest lists ${i} chunks of ${at} bytes, its header says ${count} chunks of ${header.size}`,
      );
    offsets[count] = at;
    return new SnapshotImage(header, offsets, ids, source, cacheBytes);
  }

  get size(): number {
    return this.header.size;
  }

  /** The bytes at [offset, offset + length), which the caller has checked lie within the image. */
  async read(offset: number, length: number): Promise<Buffer> {
    const out = Buffer.allocUnsafe(length);
    const end = offset + length;
    const pieces: Promise<void>[] = [];
    for (let i = this.chunkAt(offset); i < this.offsets.length - 1 && this.offsets[i] < end; i++) {
      const start = this.offsets[i];
      const from = Math.max(offset, start);
      const to = Math.min(end, this.offsets[i + 1]);
      pieces.push(
        this.chunk(i).then((raw) => {
          raw.copy(out, from - offset, from - start, to - start);
        }),
      );
    }
    await Promise.all(pieces);
    return out;
  }

  /** The index of the chunk holding byte `offset`. */
  private chunkAt(offset: number): number {
    let lo = 0;
    let hi = this.offsets.length - 2;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (this.offsets[mid] <= offset) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  private chunk(i: number): Promise<Buffer> {
    const id = this.ids.toString('hex', i * 32, i * 32 + 32);
    const length = this.offsets[i + 1] - this.offsets[i];
    if (this.zeros.isZeroId(id)) return Promise.resolve(this.zeros.zeroBytes(length));
    // By id, not position: a chunk the image holds twice is downloaded and cached once.
    const cached = this.cache.get(id);
    if (cached) return Promise.resolve(cached);
    let running = this.inFlight.get(id);
    if (!running) {
      running = this.source(id, length)
        .then((raw) => {
          if (raw.length !== length)
            throw new InvalidInputError(`chunk ${id} is ${raw.length} bytes, the manifest says ${length}`);
          if (!this.zeros.learn(id, raw)) this.cache.set(id, raw);
          return raw;
        })
        .finally(() => this.inFlight.delete(id));
      this.inFlight.set(id, running);
    }
    return running;
  }
}
