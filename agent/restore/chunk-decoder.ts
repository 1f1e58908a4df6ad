import { createHash } from 'node:crypto';
import binding from 'zstd-napi/binding.js';
import { CorruptError, HashMismatchError } from '../../common/errors.js';
import { checkKeyedId, openChunk } from '../e2e/chunk-sealing.js';
import type { FetchedChunk } from './chunk-fetcher.js';

// binding.js is CommonJS that loads the addon by computed path: Node cannot see its named exports.
const { DCtx, getFrameContentSize } = binding;
let dctx: InstanceType<typeof DCtx> | undefined;

/**
 * Turns a fetched payload into the chunk's raw bytes and proves they are the chunk: decompression writes
 * into a buffer of exactly the manifest's length (zstd refuses to overflow it, so a hostile payload cannot
 * make us allocate more), and SHA-256 of the result must equal the id before anyone writes it to a disk.
 */
export function decodeChunk(
  fetched: FetchedChunk,
  id: string,
  length: number,
  into?: ArrayBuffer,
  e2e?: ChunkOpeningKeys,
): Buffer {
  if (e2e !== undefined || fetched.encoding === 'sealed') return decodeSealed(fetched, id, length, into, e2e);
  const raw =
    fetched.encoding === 'zstd' ? decompressExact(fetched.payload, length, id, into) : fetched.payload;
  if (raw.length !== length) {
    throw new CorruptError(`chunk ${id}: got ${raw.length} bytes, the manifest says ${length}`, {
      chunk: id,
    });
  }
  if (!fetched.verified) {
    const actual = createHash('sha256').update(raw).digest('hex');
    if (actual !== id)
      throw new HashMismatchError(`chunk ${id}: content hashes to ${actual}`, { chunk: id, actual });
  }
  return raw;
}

/** What opening sealed chunks takes (agent/e2e/e2e-keys.ts), as a worker thread receives it. */
export interface ChunkOpeningKeys {
  keyId: string;
  idKey: Uint8Array;
  chunkKey: Uint8Array;
}

/**
 * An end-to-end chunk: authenticated and decrypted (tag, key id, id bound to the keyed id), decompressed
 * within the manifest's length, and its bytes checked against the keyed id before anyone writes them.
 */
function decodeSealed(
  fetched: FetchedChunk,
  id: string,
  length: number,
  into: ArrayBuffer | undefined,
  e2e: ChunkOpeningKeys | undefined,
): Buffer {
  if (e2e === undefined)
    throw new CorruptError(`chunk ${id} is sealed end to end: restoring it needs its key (--key FILE)`, {
      chunk: id,
    });
  if (fetched.encoding !== 'sealed')
    throw new CorruptError(`chunk ${id} is not sealed, but the snapshot is end to end`, { chunk: id });
  const opened = openChunk(e2e, id, length, fetched.payload);
  const raw = opened.zstd ? decompressExact(opened.body, length, id, into) : intoStart(opened.body, into);
  if (raw.length !== length)
    throw new CorruptError(`chunk ${id}: got ${raw.length} bytes, the manifest says ${length}`, {
      chunk: id,
    });
  checkKeyedId(e2e.idKey, id, opened.kid, raw);
  return raw;
}

/**
 * A stored body copied to the start of `into` when it is large enough (a recycled buffer that can travel
 * between threads whole), else as it is: a view into the opened payload.
 */
function intoStart(body: Buffer, into?: ArrayBuffer): Buffer {
  if (into === undefined || into.byteLength < body.length) return body;
  const out = Buffer.from(into, 0, body.length);
  body.copy(out);
  return out;
}

/** Decompresses into the start of `into` when it is large enough (a recycled buffer), else into a new one. */
function decompressExact(payload: Buffer, length: number, id: string, into?: ArrayBuffer): Buffer {
  let declared: number | null;
  try {
    declared = getFrameContentSize(payload);
  } catch (err) {
    throw new CorruptError(`chunk ${id}: not a zstd frame (${(err as Error).message})`, { chunk: id });
  }
  if (declared !== null && declared !== length) {
    throw new CorruptError(
      `chunk ${id}: zstd frame declares ${declared} bytes, the manifest says ${length}`,
      { chunk: id },
    );
  }
  const out =
    into !== undefined && into.byteLength >= length
      ? Buffer.from(into, 0, length)
      : Buffer.allocUnsafe(length);
  let produced: number;
  try {
    dctx ??= new DCtx();
    produced = dctx.decompress(out, payload);
  } catch (err) {
    throw new CorruptError(
      `chunk ${id}: zstd payload does not decompress to ${length} bytes (${(err as Error).message})`,
      {
        chunk: id,
      },
    );
  }
  if (produced !== length) {
    throw new CorruptError(
      `chunk ${id}: zstd payload expands to ${produced} bytes, the manifest says ${length}`,
      { chunk: id },
    );
  }
  return out;
}
