import type { Readable } from 'node:stream';
import { DiskvaultError, InvalidInputError } from '../common/errors.js';
import type { ByteRange } from './adapter.js';

/** Helpers every adapter needs the same way, so that adapters agree on edge cases. */

const PREFIX_PATTERN = /^[A-Za-z0-9._\-/]{0,1024}$/;

/** A list prefix is a partial key: same alphabet, and its complete folders must be valid key segments. */
export function validateListPrefix(prefix: string): void {
  if (typeof prefix !== 'string' || !PREFIX_PATTERN.test(prefix)) {
    throw new InvalidInputError(
      `invalid storage list prefix ${JSON.stringify(String(prefix).slice(0, 200))}`,
    );
  }
  const folders = prefix.split('/').slice(0, -1);
  for (const segment of folders) {
    if (segment === '' || segment === '.' || segment === '..') {
      throw new InvalidInputError(`invalid storage list prefix ${JSON.stringify(prefix)}`);
    }
  }
}

/** Rejects ranges no adapter could honour, before any I/O. */
export function checkRange(range: ByteRange): void {
  const { start, end } = range;
  if (
    !Number.isSafeInteger(start) ||
    start < 0 ||
    (end !== undefined && (!Number.isSafeInteger(end) || end < start))
  ) {
    throw new InvalidInputError(`invalid byte range ${JSON.stringify(range)}`);
  }
}

/**
 * HTTP Range semantics, as S3 applies them: an end past the object is cut to its last byte; a start at or
 * past the end cannot be satisfied.
 */
export function clampRange(range: ByteRange, size: number, key: string): { start: number; end: number } {
  checkRange(range);
  if (range.start >= size) {
    throw new InvalidInputError(`byte range ${range.start}- is beyond the ${size}-byte object ${key}`, {
      key,
      size,
    });
  }
  return { start: range.start, end: Math.min(range.end ?? size - 1, size - 1) };
}

/**
 * A body of announced length into `out`, which has exactly that length. A body longer than announced is an
 * error, not a reason to grow; a shorter one returns the part that came.
 */
export async function readInto(stream: Readable, out: Buffer, key: string): Promise<Buffer> {
  let filled = 0;
  for await (const part of stream) {
    const piece: Buffer = Buffer.isBuffer(part) ? part : Buffer.from(part);
    if (filled + piece.length > out.length) {
      stream.destroy();
      throw new DiskvaultError(
        'Unavailable',
        `storage sent more than the announced ${out.length} bytes of ${key}`,
      );
    }
    filled += piece.copy(out, filled);
  }
  return out.subarray(0, filled);
}

/** Only for streams of bounded size (one object read by getBytes). */
export async function readAll(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const part of stream) parts.push(Buffer.isBuffer(part) ? part : Buffer.from(part));
  return Buffer.concat(parts);
}
