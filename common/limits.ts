// Sizes and thresholds every layer must agree on.

/**
 * No repository's chunker may cut a chunk larger than this, so no chunk upload or download needs more room.
 * A stored chunk is held whole in memory several times over (raw, compressed, cache): keep it modest.
 */
export const MAX_CHUNK_BYTES = 64 * 1024 * 1024;

/** A chunk is sent and stored compressed only when that saves at least this fraction of it. */
export const MIN_COMPRESSION_SAVING = 0.03;

/** Whether `compressed` bytes for `raw` bytes save enough to be worth decompressing later. */
export function compressionWorthwhile(compressed: number, raw: number): boolean {
  return compressed <= raw * (1 - MIN_COMPRESSION_SAVING);
}

/** ZSTD_COMPRESSBOUND: the most zstd can write for `n` input bytes. */
export function zstdCompressBound(n: number): number {
  return n + (n >>> 8) + (n < 128 * 1024 ? (128 * 1024 - n) >>> 11 : 0);
}

/** Room for a zstd frame of `n` raw bytes as received from the other side: the bound plus frame slack. */
export function zstdBound(n: number): number {
  return zstdCompressBound(n) + 1024;
}
