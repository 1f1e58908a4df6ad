import type { DiskvaultClient } from '../client.js';
import type { ChunkFetcher, FetchedChunk } from './chunk-fetcher.js';

/**
 * A client that can hand out a chunk's payload as the server sent it (zstd or raw, not yet checked), so the
 * restore decompresses and hashes on its worker threads instead of the main thread. Requested from the
 * client's owner; used when present.
 */
interface PayloadClient {
  getChunkPayload(id: string): Promise<{ encoding: 'raw' | 'zstd'; payload: Buffer }>;
}

/**
 * The restore core's view of the HTTP client. `getChunk` already decompresses within the announced length
 * and checks SHA-256 against the id on the very bytes it returns, so the core need not hash them again;
 * it still checks the length against the manifest.
 */
export function clientChunkFetcher(
  client: Pick<DiskvaultClient, 'getChunk'> & Partial<PayloadClient>,
): ChunkFetcher {
  const payloads = typeof client.getChunkPayload === 'function' ? (client as PayloadClient) : undefined;
  if (payloads) {
    return {
      async fetch(id: string): Promise<FetchedChunk> {
        const { encoding, payload } = await payloads.getChunkPayload(id);
        return { encoding, payload, verified: false };
      },
    };
  }
  return {
    async fetch(id: string): Promise<FetchedChunk> {
      return { encoding: 'raw', payload: await client.getChunk(id), verified: true };
    },
  };
}
