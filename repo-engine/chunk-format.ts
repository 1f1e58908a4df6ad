import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import { CorruptError, DiskvaultError, InvalidInputError } from '../common/errors.js';
import { compressionWorthwhile, zstdCompressBound } from '../common/limits.js';

/**
 * A stored chunk object: a 9-byte header, then the payload.
 *
 *   magic        3 bytes  "DVC"
 *   version      1 byte   1
 *   compression  1 byte   0 raw, 1 zstd, 2 sealed end to end (the payload is a sealed chunk, sealed-chunk.ts)
 *   rawLength    u32 BE   length of the chunk's raw bytes (what its SHA-256 id covers)
 *   payload      the raw bytes, or exactly one zstd frame that declares its content size (= rawLength)
 *
 * The header makes a stored object self-describing, so reindex can learn a chunk's raw size from 9 bytes and
 * the server can hand out a zstd payload without recompressing it.
 */
export const CHUNK_MAGIC = Buffer.from('DVC', 'ascii');
export const CHUNK_FORMAT_VERSION = 1;
export const CHUNK_HEADER_BYTES = 9;
export type ChunkEncoding = 'raw' | 'zstd' | 'sealed';
const COMPRESSION_BYTE: Record<ChunkEncoding, number> = { raw: 0, zstd: 1, sealed: 2 };
const ENCODING_OF_BYTE: ChunkEncoding[] = ['raw', 'zstd', 'sealed'];
export const COMPRESSION_LEVEL = 1;

export interface DecodedChunk {
  encoding: ChunkEncoding;
  rawLength: number;
  payload: Buffer;
}

/**
 * A plaintext chunk object in one buffer: the 9-byte header, then the payload. The server builds its objects
 * through its codec's sealChunk from the two pieces; this is the format written directly (tests, tools).
 */
export function encodeStoredChunk(encoding: ChunkEncoding, rawLength: number, payload: Buffer): Buffer {
  const out = Buffer.allocUnsafe(CHUNK_HEADER_BYTES + payload.length);
  writeStoredChunkHeader(out, encoding, rawLength);
  payload.copy(out, CHUNK_HEADER_BYTES);
  return out;
}

/** The 9-byte header of a stored chunk object, alone: for sealing header and payload without joining them. */
export function storedChunkHeader(encoding: ChunkEncoding, rawLength: number): Buffer {
  const header = Buffer.allocUnsafe(CHUNK_HEADER_BYTES);
  writeStoredChunkHeader(header, encoding, rawLength);
  return header;
}

function writeStoredChunkHeader(out: Buffer, encoding: ChunkEncoding, rawLength: number): void {
  CHUNK_MAGIC.copy(out, 0);
  out[3] = CHUNK_FORMAT_VERSION;
  out[4] = COMPRESSION_BYTE[encoding];
  out.writeUInt32BE(rawLength, 5);
}

export function decodeStoredChunkHeader(
  bytes: Buffer,
  id: string,
): { encoding: ChunkEncoding; rawLength: number } {
  if (bytes.length < CHUNK_HEADER_BYTES || !bytes.subarray(0, 3).equals(CHUNK_MAGIC)) {
    throw new CorruptError(`chunk ${id} is corrupt: no chunk header`, { chunk: id });
  }
  if (bytes[3] !== CHUNK_FORMAT_VERSION)
    throw new CorruptError(`chunk ${id} has unknown format version ${bytes[3]}`, { chunk: id });
  const compression = bytes[4];
  const encoding = ENCODING_OF_BYTE[compression];
  if (encoding === undefined)
    throw new CorruptError(`chunk ${id} has unknown compression ${compression}`, { chunk: id });
  return { encoding, rawLength: bytes.readUInt32BE(5) };
}

export function decodeStoredChunk(bytes: Buffer, id: string): DecodedChunk {
  const head = decodeStoredChunkHeader(bytes, id);
  return { ...head, payload: bytes.subarray(CHUNK_HEADER_BYTES) };
}

export function sha256Hex(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

// The low-level binding lets us decompress into a buffer of a size WE choose; the high-level decompress()
// trusts the frame's claimed content size and would allocate whatever a hostile frame asks for.
interface ZstdBinding {
  DCtx: new () => { decompress(dst: Uint8Array, src: Uint8Array): number };
  getFrameContentSize(frame: Uint8Array): number | null;
  findFrameCompressedSize(frame: Uint8Array): number;
  CCtx: new () => { compress(dst: Uint8Array, src: Uint8Array, level: number): number };
}
const binding = createRequire(import.meta.url)('zstd-napi/binding.js') as ZstdBinding;
let dctx: InstanceType<ZstdBinding['DCtx']> | undefined;

/** The little-endian magic number every zstd frame starts with (skippable frames have others). */
const ZSTD_FRAME_MAGIC = 0xfd2fb528;

/**
 * Why a zstd payload is not the one form the repository stores for a chunk of `rawLength` bytes, or
 * undefined when it is: exactly one zstd frame, declaring its content size, equal to `rawLength`, with
 * nothing after it. The decoder checks a frame's blocks against its declared size, so every reader that
 * decodes such a payload within `rawLength` gets the whole chunk or an error; concatenated frames,
 * skippable frames or a missing size would let a reader that trusts the first frame's header stop early.
 * Looks at frame headers only: whether the frame decodes to the right bytes is checked by decompressing.
 */
export function zstdPayloadProblem(payload: Buffer, rawLength: number): string | undefined {
  if (payload.length < 4 || payload.readUInt32LE(0) !== ZSTD_FRAME_MAGIC)
    return 'its payload does not start with a zstd frame';
  let declared: number | null;
  let frameBytes: number;
  try {
    declared = binding.getFrameContentSize(payload);
    frameBytes = binding.findFrameCompressedSize(payload);
  } catch (err) {
    return `its payload is not a zstd frame (${(err as Error).message})`;
  }
  if (declared === null || declared === undefined) return 'its zstd frame does not declare its size';
  if (declared !== rawLength)
    return `its zstd frame declares ${declared} bytes, its header says ${rawLength}`;
  if (frameBytes !== payload.length)
    return `${payload.length - frameBytes} bytes follow its zstd frame (one frame is allowed)`;
  return undefined;
}

/** Thrown when a payload would decompress beyond the bound: a decompression bomb or an oversized chunk. */
export class TooLargeError extends DiskvaultError {
  constructor(message: string, details?: Record<string, unknown>) {
    super('TooLarge', message, details);
  }
}

/**
 * Decompresses `payload` into at most `maxBytes`. One extra byte of room tells "exactly max" apart from
 * "more than max" (zstd fails with dstSize_tooSmall once the room is used up, so nothing beyond is written).
 *
 * `into` (at least maxBytes + 1 bytes) lets a caller that only needs the bytes for a moment reuse one buffer:
 * a fresh 4 MiB buffer per uploaded chunk cost the server more in garbage collection than in decompression.
 */
export function decompressBounded(payload: Buffer, maxBytes: number, what: string, into?: Buffer): Buffer {
  const out = into && into.length > maxBytes ? into : Buffer.allocUnsafe(maxBytes + 1);
  dctx ??= new binding.DCtx();
  let n: number;
  try {
    n = dctx.decompress(out, payload);
  } catch (err) {
    const message = (err as Error).message ?? String(err);
    if (/too small/i.test(message)) {
      throw new TooLargeError(`${what} decompresses to more than ${maxBytes} bytes`, { limit: maxBytes });
    }
    throw new InvalidInputError(`${what} is not valid zstd data: ${message}`);
  }
  if (n > maxBytes)
    throw new TooLargeError(`${what} decompresses to more than ${maxBytes} bytes`, { limit: maxBytes });
  return out.subarray(0, n);
}

let cctx: InstanceType<ZstdBinding['CCtx']> | undefined;
let compressScratch: Buffer | undefined;

/**
 * How a raw upload is stored: compressed with zstd level 1 when that saves at least 3% (otherwise raw, so
 * incompressible data stays cheap to read). A compressed payload lies in one reused scratch buffer and is
 * valid until the next call: the caller copies it into the object it stores, so no chunk-sized buffer is
 * allocated per upload (per-upload megabyte buffers were the server's largest garbage-collection cost).
 */
export function storedFormOfRaw(raw: Buffer): { encoding: 'raw' | 'zstd'; payload: Buffer } {
  const room = zstdCompressBound(raw.length);
  if (!compressScratch || compressScratch.length < room) compressScratch = Buffer.allocUnsafe(room);
  cctx ??= new binding.CCtx();
  const packed = cctx.compress(compressScratch.subarray(0, room), raw, COMPRESSION_LEVEL);
  return compressionWorthwhile(packed, raw.length)
    ? { encoding: 'zstd', payload: compressScratch.subarray(0, packed) }
    : { encoding: 'raw', payload: raw };
}
