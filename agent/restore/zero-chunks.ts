import { createHash } from 'node:crypto';

/**
 * Knows which chunk ids are runs of zeros, so a restore neither downloads them nor writes them to a sparse
 * file. The id of N zeros is SHA-256 of N zero bytes, so it can be computed locally; doing that for every
 * chunk length would cost a hash over the whole image, so only likely lengths are computed up front (the
 * chunker's maximum: a long zero run is cut into max-size pieces) and the rest are learned when a fetched
 * chunk turns out to be all zeros.
 */
export class ZeroChunks {
  private readonly zeroIds = new Set<string>();
  private readonly zeros: Buffer;

  /**
   * `idOf`: how the snapshot names a chunk's bytes, when not by SHA-256 (an end-to-end snapshot's ids are
   * keyed, agent/e2e/chunk-sealing.ts e2eChunkId).
   */
  constructor(likelyLengths: number[], maxLength: number, idOf?: (bytes: Buffer) => string) {
    this.zeros = Buffer.alloc(Math.max(1, maxLength));
    const id = idOf ?? ((b: Buffer) => createHash('sha256').update(b).digest('hex'));
    for (const len of likelyLengths) {
      if (len > 0 && len <= maxLength) this.zeroIds.add(id(this.zeros.subarray(0, len)));
    }
  }

  knownIds(): string[] {
    return [...this.zeroIds];
  }

  isZeroId(id: string): boolean {
    return this.zeroIds.has(id);
  }

  /** Remembers `id` as a zero chunk when `raw` is all zeros; returns whether it is. */
  learn(id: string, raw: Buffer): boolean {
    if (!isAllZero(raw, this.zeros)) return false;
    this.zeroIds.add(id);
    return true;
  }

  /** A shared read-only zero buffer of `length` bytes (never write into it). */
  zeroBytes(length: number): Buffer {
    return length <= this.zeros.length ? this.zeros.subarray(0, length) : Buffer.alloc(length);
  }
}

/** memcmp against a zero buffer: an order of magnitude faster than a byte loop in JS. */
export function isAllZero(buf: Buffer, zeros: Buffer): boolean {
  for (let at = 0; at < buf.length; at += zeros.length) {
    const end = Math.min(buf.length, at + zeros.length);
    if (buf.compare(zeros, 0, end - at, at, end) !== 0) return false;
  }
  return true;
}
