import type { BufferAllocator } from '../../storage-adapters/adapter.js';
import type { DiskvaultClient } from '../client.js';
import type { ChunkFetcher, FetchedChunk, PayloadBuffers } from './chunk-fetcher.js';

/**
 * A client that can hand out a chunk's payload as the server sent it (zstd or raw, not yet checked), so the
 * restore decompresses and hashes on its worker threads instead of the main thread. Used when present.
 */
interface PayloadClient {
  getChunkPayload(
    id: string,
    maxRawLength?: number,
    alloc?: BufferAllocator,
  ): Promise<{ encoding: 'raw' | 'zstd' | 'sealed'; payload: Buffer }>;
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
      // The manifest's length bounds what the client reads; the decode still checks it exactly.
      async fetch(id: string, length: number, buffers?: PayloadBuffers): Promise<FetchedChunk> {
        const alloc = buffers && ((n: number) => buffers.takeBuffer(n));
        const { encoding, payload } = await payloads.getChunkPayload(id, length, alloc);
        return { encoding, payload, verified: false };
      },
    };
  }
  return {
    async fetch(id: string, length: number): Promise<FetchedChunk> {
      return { encoding: 'raw', payload: await client.getChunk(id, length), verified: true };
    },
  };
}
