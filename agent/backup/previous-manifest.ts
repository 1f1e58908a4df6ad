import {
  type ChunkerParams,
  MANIFEST_ENTRY_BYTES,
  ManifestReader,
} from '../../repo-engine/manifest-codec.js';
import type { DiskvaultClient } from '../client.js';
import type { IdSet } from './id-set.js';

/** The previous snapshot's chunks that start inside one window, for the cutter's fast path. */
export interface PreviousSlice {
  /** Image offsets where the chunks start, ascending. */
  starts: Float64Array;
  /** Image offsets where they end. */
  ends: Float64Array;
  /** Their ids, 32 bytes each. */
  ids: Uint8Array;
  /** The previous image's size: fastcdc cuts the last `max` bytes of an image differently. */
  imageSize: number;
}

/**
 * The chunk map of the previous snapshot of the same host and disk, kept compact (40 bytes a chunk: a 2 TiB
 * disk's two million chunks take 80 MiB). Where the disk did not change since, its chunks are cut exactly as
 * last time; the cutter checks that by hashing instead of running fastcdc (see window-cutter.ts).
 */
export class PreviousManifest {
  constructor(
    /** Start offset of each chunk, ascending; entry n is the image size. */
    private readonly bounds: Float64Array,
    private readonly ids: Uint8Array,
    readonly chunker: ChunkerParams,
  ) {}

  get chunkCount(): number {
    return this.bounds.length - 1;
  }

  get imageSize(): number {
    return this.bounds[this.bounds.length - 1];
  }

  /**
   * Downloads the manifest of snapshot `snapshotId`, adding every id to `known` on the way, so the chunks the
   * disk kept since are never even asked about. If one of them was deleted since (forget + gc), the commit
   * names it and the backup uploads it then: the known-set is a hint, the server's commit check is the truth.
   */
  static async download(
    client: DiskvaultClient,
    snapshotId: string,
    known: IdSet,
  ): Promise<PreviousManifest> {
    const stream = await client.getManifest(snapshotId);
    try {
      const reader = await ManifestReader.open(stream, 'wire');
      const count = reader.header.chunkCount;
      const bounds = new Float64Array(count + 1);
      const ids = new Uint8Array(count * 32);
      let n = 0;
      let offset = 0;
      for await (const batch of reader.entryBatches(16384)) {
        for (let at = 0; at < batch.length; at += MANIFEST_ENTRY_BYTES) {
          known.add(batch, at);
          ids.set(batch.subarray(at, at + 32), n * 32);
          bounds[n] = offset;
          offset += batch.readUInt32BE(at + 32);
          n++;
        }
      }
      // The reader has checked that the entries match the header's count and size.
      bounds[count] = offset;
      return new PreviousManifest(bounds, ids, reader.header.chunker);
    } finally {
      stream.destroy();
    }
  }

  /** The chunks starting in image bytes [from, to). */
  slice(from: number, to: number): PreviousSlice {
    const first = this.lowerBound(from);
    let last = first;
    while (last < this.chunkCount && this.bounds[last] < to) last++;
    return {
      starts: this.bounds.slice(first, last),
      ends: this.bounds.slice(first + 1, last + 1),
      ids: this.ids.slice(first * 32, last * 32),
      imageSize: this.imageSize,
    };
  }

  /**
   * Where the cut of a window ending at image offset `end` will most likely leave its carry: the start of
   * last night's chunk that straddles `end`, or `end` itself when one of last night's chunks ends there.
   * From a pipe (`sizeKnown` false) the cut stops earlier, at the first of last night's boundaries less than
   * max bytes before `end` (window-cutter.ts: whether the image ends within max bytes is not known there yet).
   * Exact wherever the disk is unchanged around `end`; a guess to be checked, never trusted.
   */
  carryStartAt(end: number, sizeKnown = true): number | null {
    if (end <= 0 || end >= this.imageSize) return null;
    const i = this.lowerBound(sizeKnown ? end : end - this.chunker.max + 1);
    if (i < this.bounds.length && (sizeKnown ? this.bounds[i] === end : this.bounds[i] <= end))
      return this.bounds[i];
    const straddling = this.lowerBound(end);
    return straddling > 0 ? this.bounds[straddling - 1] : null;
  }

  /** First chunk index whose start is >= offset. */
  private lowerBound(offset: number): number {
    let lo = 0;
    let hi = this.chunkCount;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.bounds[mid] < offset) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}
