import { createHash } from 'node:crypto';
import { CorruptError, HashMismatchError } from '../common/errors.js';
import { decompressExactly } from './zstd-bounded.js';

/**
 * A plain (not end-to-end) chunk's raw bytes from its payload as a server sent it: exactly `rawLength` of
 * them (decompressed to that length, or a raw payload of it) and checked against its id. Throws CorruptError
 * (not a frame of that length, or a raw payload of another) or HashMismatchError (the bytes are other bytes);
 * each message begins with `what`.
 */
export async function checkedPlainChunk(
  id: string,
  encoding: 'raw' | 'zstd',
  payload: Buffer,
  rawLength: number,
  what = `chunk ${id}`,
): Promise<Buffer> {
  if (encoding === 'raw' && payload.length !== rawLength)
    throw new CorruptError(`${what}: ${payload.length} raw bytes, expected ${rawLength}`);
  const raw = encoding === 'zstd' ? await decompressExactly(payload, rawLength, what) : payload;
  const actual = createHash('sha256').update(raw).digest('hex');
  if (actual !== id) throw new HashMismatchError(`${what}: its bytes hash to ${actual}`, { chunk: id });
  return raw;
}
