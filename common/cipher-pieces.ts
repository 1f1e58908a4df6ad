import type { Cipher, Decipher } from 'node:crypto';

/**
 * Pieces a cipher is fed in. Node's ciphers return a fresh buffer per call and cannot write into a given one:
 * small short-lived outputs are memory malloc hands back each time, where one the size of a chunk is fresh
 * pages every time (on the machines measured, a first touch of a page costs about 15 µs).
 */
export const CIPHER_PIECE_BYTES = 32 * 1024;

/**
 * Runs `input` through `cipher` in pieces, writing the output into `out` at `at`. `out` may be `input`'s own
 * memory at the same place or before it (GCM's output is as long as its input, so a piece is read before
 * anything is written over it). Returns the bytes written.
 */
export function updateInto(
  cipher: Cipher | Decipher,
  input: Uint8Array,
  out: Uint8Array,
  at: number,
): number {
  let written = 0;
  for (let from = 0; from < input.length; from += CIPHER_PIECE_BYTES) {
    const piece = input.subarray(from, Math.min(input.length, from + CIPHER_PIECE_BYTES));
    written += cipher.update(piece).copy(out, at + written);
  }
  return written;
}
