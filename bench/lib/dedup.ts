/** What one night adds to a repository that holds every earlier night, by chunker and compression alone. */
export interface NightDedup {
  image: string;
  /** Non-zero chunks of the image (zero chunks are never stored). */
  chunks: number;
  zeroChunks: number;
  /** Chunks no earlier night had. */
  newChunks: number;
  newRawBytes: number;
  /** The new chunks as stored, one figure per compression level: each chunk zstd-compressed, or raw when that is smaller. */
  newStoredBytes: number[];
  /** Bytes in the 4 KiB blocks that differ from the previous night's image (null for the first): what changed. */
  changedBytes: number | null;
}

/**
 * Chunk ids seen so far, across nights, and the tally of the night being counted. A chunk is new when no
 * earlier chunk (of this night or an earlier one) had its id: the repository stores each id once.
 */
export class DedupLedger {
  private readonly seen = new Set<string>();
  private current: NightDedup | undefined;

  constructor(readonly levels: number[]) {}

  startNight(image: string, changedBytes: number | null): void {
    this.current = {
      image,
      chunks: 0,
      zeroChunks: 0,
      newChunks: 0,
      newRawBytes: 0,
      newStoredBytes: this.levels.map(() => 0),
      changedBytes,
    };
  }

  zeroChunk(): void {
    this.night().zeroChunks++;
  }

  /**
   * Counts a non-zero chunk; `storedSizes` (one per level) is asked for only when the chunk is new, so a
   * caller compresses only what a repository would store. Returns whether it was new.
   */
  chunk(id: string, rawLength: number, storedSizes: () => number[]): boolean {
    const night = this.night();
    night.chunks++;
    if (this.seen.has(id)) return false;
    this.seen.add(id);
    night.newChunks++;
    night.newRawBytes += rawLength;
    const sizes = storedSizes();
    for (let i = 0; i < this.levels.length; i++)
      night.newStoredBytes[i] += Math.min(rawLength, sizes[i] ?? rawLength);
    return true;
  }

  endNight(): NightDedup {
    const night = this.night();
    this.current = undefined;
    return night;
  }

  private night(): NightDedup {
    if (!this.current) throw new Error('DedupLedger: no night started');
    return this.current;
  }
}

/** Bytes in the `blockSize` blocks where `a` and `b` differ, over their common length. */
export function changedBlockBytes(a: Uint8Array, b: Uint8Array, blockSize: number): number {
  const length = Math.min(a.length, b.length);
  const left = Buffer.from(a.buffer, a.byteOffset, length);
  let changed = 0;
  for (let at = 0; at < length; at += blockSize) {
    const end = Math.min(at + blockSize, length);
    if (left.compare(b, at, end, at, end) !== 0) changed += end - at;
  }
  return changed;
}
