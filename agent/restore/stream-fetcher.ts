import { isDiskvaultError } from '../../common/errors.js';
import type { ChunkFetchStream } from '../chunk-fetch-stream-client.js';
import { isPassing, isRefusal } from '../chunk-sender.js';
import { ChunkStreamBroken } from '../chunk-stream-client.js';
import type { DiskvaultClient } from '../client.js';
import type { ChunkFetcher, FetchedChunk, PayloadBuffers } from './chunk-fetcher.js';

/**
 * Connections lost in a row (no chunk received in between) before the rest of the read goes per chunk:
 * a link that keeps dropping is better served by requests that each retry on their own.
 */
const MAX_BREAKS = 4;

/** Times one chunk is asked for over a stream (each on a new connection) before it goes as a request. */
const ATTEMPTS_PER_CHUNK = 3;

export interface StreamChunkFetcher extends ChunkFetcher {
  /** Ends the stream (once every fetch has settled). */
  close(): void;
}

/**
 * Fetches chunks over the fetch stream (common/chunk-stream.ts), handing out each payload as the server
 * sent it (the restore decodes and hashes it, as for `GET /v1/chunks/:id`). A lost connection is opened
 * again and the unanswered chunks asked for again on it; when it cannot be opened (or keeps breaking) a
 * chunk goes as its own GET, with that request's retries and errors, so a restore fails no differently than
 * it would without the stream. A passing server fault for one chunk is retried the same way; a refusal
 * (absent, damaged, a revoked token) is final. The client's signal (Ctrl-C) ends the stream at once.
 */
export function streamChunkFetcher(
  client: Pick<DiskvaultClient, 'openChunkFetchStream'>,
  perChunk: ChunkFetcher,
  signal?: AbortSignal,
): StreamChunkFetcher {
  let stream: ChunkFetchStream | undefined;
  let opening: Promise<ChunkFetchStream | undefined> | undefined;
  let givenUp = false;
  let breaks = 0;
  let closed = false;

  const onAbort = () => stream?.destroy(signal?.reason);
  signal?.addEventListener('abort', onAbort, { once: true });

  const broke = () => {
    if (++breaks >= MAX_BREAKS) givenUp = true;
  };

  const open = async (): Promise<ChunkFetchStream | undefined> => {
    try {
      const s = await client.openChunkFetchStream();
      if (!s) givenUp = true;
      else if (signal?.aborted || closed) s.destroy(signal?.reason);
      else stream = s;
      return stream;
    } catch (err) {
      if (signal?.aborted) throw signal.reason;
      // A refused upgrade (a token the GETs will meet as refused too, or a proxy in between that does not
      // pass upgrades) leaves the read to the GETs, which answer as they always have.
      if (isRefusal(err)) givenUp = true;
      else broke();
      return undefined;
    }
  };

  const current = (): Promise<ChunkFetchStream | undefined> | ChunkFetchStream | undefined => {
    if (givenUp || closed) return undefined;
    if (stream?.usable) return stream;
    stream = undefined;
    opening ??= open().finally(() => {
      opening = undefined;
    });
    return opening;
  };

  return {
    async fetch(id: string, length: number, buffers?: PayloadBuffers): Promise<FetchedChunk> {
      const alloc = buffers && ((n: number) => buffers.takeBuffer(n));
      for (let attempt = 0; attempt < ATTEMPTS_PER_CHUNK && length >= 1; attempt++) {
        signal?.throwIfAborted();
        const s = await current();
        if (!s) break;
        try {
          const { encoding, payload } = await s.fetch(id, length, alloc);
          breaks = 0;
          return { encoding, payload, verified: false };
        } catch (err) {
          if (signal?.aborted) throw signal.reason;
          if (err instanceof ChunkStreamBroken) {
            // Every fetch on the lost stream lands here: the first one counts the loss.
            if (stream === s) {
              stream = undefined;
              broke();
            }
            continue;
          }
          if (isDiskvaultError(err) && isPassing(err)) break;
          throw err;
        }
      }
      return await perChunk.fetch(id, length, buffers);
    },
    close(): void {
      closed = true;
      signal?.removeEventListener('abort', onAbort);
      const s = stream;
      stream = undefined;
      if (s?.usable && s.pending === 0) s.end();
      else s?.destroy();
    },
  };
}
