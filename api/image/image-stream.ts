import { createHash } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import { CorruptError } from '../../common/errors.js';
import type { RepositoryApi } from '../../repo-engine/types.js';
import type { ImageIndex } from './image-index.js';

/** How far a stream reads ahead of what the socket has taken. */
export interface ReadAhead {
  /** Chunk reads in flight at once. */
  chunks: number;
  /** Raw bytes read but not yet written, at most (one chunk always goes, whatever its size). */
  bytes: number;
}

export const DEFAULT_READ_AHEAD: ReadAhead = { chunks: 8, bytes: 64 * 1024 * 1024 };

/**
 * Ids that are runs of zeros, so a stream sends their bytes without reading storage. The id of N zeros is
 * SHA-256 of N zero bytes: the chunker's maximum (the length a long zero run is cut into) is computed up
 * front, other lengths are learned the first time such a chunk is read and turns out all zeros.
 */
export class ZeroChunkIds {
  private readonly ids = new Set<string>();
  private readonly zeros: Buffer;

  constructor(maxChunk: number) {
    this.zeros = Buffer.alloc(Math.max(1, maxChunk));
    this.ids.add(createHash('sha256').update(this.zeros).digest('hex'));
  }

  has(id: string): boolean {
    return this.ids.has(id);
  }

  /** A shared zero buffer: never write into it. */
  bytes(length: number): Buffer {
    return length <= this.zeros.length ? this.zeros.subarray(0, length) : Buffer.alloc(length);
  }

  learn(id: string, raw: Buffer): void {
    // A handful of lengths in practice; the cap only keeps a pathological repository from growing the set.
    if (this.ids.size >= 4096) return;
    if (raw.length <= this.zeros.length && raw.equals(this.zeros.subarray(0, raw.length))) this.ids.add(id);
  }
}

/** Thrown when the client went away: sendError recognises the code and only logs it. */
function clientGone(): Error {
  return Object.assign(new Error('the client closed the connection'), { code: 'ERR_STREAM_PREMATURE_CLOSE' });
}

/** Resolves once `res` can take more, rejects if it closes first. */
function drained(res: ServerResponse): Promise<void> {
  return new Promise((resolve, reject) => {
    const onDrain = () => {
      res.off('close', onClose);
      resolve();
    };
    const onClose = () => {
      res.off('drain', onDrain);
      reject(clientGone());
    };
    res.once('drain', onDrain);
    res.once('close', onClose);
  });
}

type Settled = { raw: Buffer } | { error: unknown };

/**
 * Writes image bytes [start, end) to `res`, in order. Each chunk comes from `repo.readChunk`, which
 * decompresses it and checks SHA-256(raw) against its id, so nothing reaches the socket that is not the
 * chunk the manifest names; a chunk that is missing or damaged throws, and the caller cuts the connection
 * (the client then holds fewer bytes than Content-Length said, never a wrong one). Reads run ahead of the
 * socket within `readAhead` and wait whenever the socket is full, so a slow client holds a bounded amount
 * of memory and storage is not read faster than the client takes it.
 */
export async function streamImage(
  repo: RepositoryApi,
  index: ImageIndex,
  zeros: ZeroChunkIds,
  start: number,
  end: number,
  res: ServerResponse,
  readAhead: ReadAhead = DEFAULT_READ_AHEAD,
): Promise<void> {
  if (start >= end) return;
  const last = index.chunkAt(end - 1);
  const pending: { i: number; result: Promise<Settled>; length: number }[] = [];
  let next = index.chunkAt(start);
  let bytesAhead = 0;
  let readsInFlight = 0;

  const launch = () => {
    while (
      next <= last &&
      readsInFlight < readAhead.chunks &&
      (pending.length === 0 || bytesAhead < readAhead.bytes)
    ) {
      const i = next++;
      const id = index.id(i);
      const length = index.end(i) - index.start(i);
      bytesAhead += length;
      if (zeros.has(id)) {
        pending.push({ i, length, result: Promise.resolve({ raw: zeros.bytes(length) }) });
        continue;
      }
      readsInFlight++;
      const result = repo.readChunk(id).then(
        (raw): Settled => {
          readsInFlight--;
          if (raw.length !== length)
            return {
              error: new CorruptError(`chunk ${id} is ${raw.length} bytes, the manifest says ${length}`),
            };
          zeros.learn(id, raw);
          return { raw };
        },
        (error: unknown): Settled => {
          readsInFlight--;
          return { error };
        },
      );
      pending.push({ i, length, result });
    }
  };

  launch();
  while (pending.length > 0) {
    const head = pending.shift() as (typeof pending)[number];
    const settled = await head.result;
    bytesAhead -= head.length;
    if ('error' in settled) throw settled.error;
    if (res.destroyed) throw clientGone();
    const chunkStart = index.start(head.i);
    const from = Math.max(start, chunkStart) - chunkStart;
    const to = Math.min(end, index.end(head.i)) - chunkStart;
    const piece = from === 0 && to === settled.raw.length ? settled.raw : settled.raw.subarray(from, to);
    const more = res.write(piece);
    launch();
    if (!more) await drained(res);
  }
}
