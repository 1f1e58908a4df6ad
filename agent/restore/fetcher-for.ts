import { CHUNK_FETCH_PROTOCOL } from '../../common/chunk-stream.js';
import type { ChunkHold } from '../chunk-hold.js';
import type { DiskvaultClient } from '../client.js';
import type { ChunkFetcher } from './chunk-fetcher.js';
import { clientChunkFetcher } from './client-fetcher.js';
import { streamChunkFetcher } from './stream-fetcher.js';

/**
 * How a reader of a snapshot (restore, NBD export) fetches its chunks: over the fetch stream when the
 * server offered it with the snapshot's lease, else one GET per chunk (an older server, or no lease).
 * `close` ends the stream; call it once every fetch has settled.
 */
export function fetcherFor(
  client: DiskvaultClient,
  hold: ChunkHold | undefined,
  signal?: AbortSignal,
): ChunkFetcher & { close(): void } {
  const perChunk = clientChunkFetcher(client);
  if (hold?.fetchStream !== CHUNK_FETCH_PROTOCOL) return { fetch: perChunk.fetch, close: () => {} };
  return streamChunkFetcher(client, perChunk, signal);
}
