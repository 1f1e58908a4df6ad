import type { PutChunkResponse } from '../api/protocol.js';
import { type DiskvaultError, isDiskvaultError } from '../common/errors.js';
import { type ChunkStream, ChunkStreamBroken } from './chunk-stream-client.js';
import type { DiskvaultClient } from './client.js';

/** A server error worth asking again about (what DiskvaultClient retries for a per-chunk request). */
export function isPassing(err: DiskvaultError): boolean {
  const status = typeof err.details?.status === 'number' ? err.details.status : 0;
  return (status === 429 || (status >= 500 && status !== 501 && status !== 507)) && err.code !== 'Corrupt';
}

/** A server's answer that asking again cannot change (a 4xx other than 429). */
export function isRefusal(err: unknown): boolean {
  const status = isDiskvaultError(err) ? err.details?.status : undefined;
  return typeof status === 'number' && status >= 400 && status < 500 && status !== 429;
}

/**
 * Sends a backup's chunks: over the session's chunk stream when the server offers one, else one request per
 * chunk. A chunk whose stream broke under it (or that met a passing server fault) is sent again as its own
 * request, with that request's retries; the stream is not reopened, the rest of the backup goes per chunk.
 * A refusal (a bad chunk, an expired session) is final either way, with the same error.
 */
export class ChunkSender {
  private constructor(
    private readonly client: DiskvaultClient,
    private readonly sessionId: string,
    private stream: ChunkStream | undefined,
  ) {}

  /** `useStream` false sends per chunk (the per-chunk route, for comparison and for old servers). */
  static async open(client: DiskvaultClient, sessionId: string, useStream = true): Promise<ChunkSender> {
    let stream: ChunkStream | undefined;
    if (useStream) {
      try {
        stream = await client.openChunkStream(sessionId);
      } catch (err) {
        // A refusal of the stream is the session's or the token's: every per-chunk request would meet it too.
        // A passing fault or a lost connection only means this backup sends per chunk, with retries.
        if (isRefusal(err)) throw err;
      }
    }
    return new ChunkSender(client, sessionId, stream);
  }

  /** Whether chunks currently go over the stream. */
  get streaming(): boolean {
    return this.stream !== undefined;
  }

  async put(id: string, payload: Buffer, encoding: 'raw' | 'zstd' | 'sealed'): Promise<PutChunkResponse> {
    const stream = this.stream;
    if (stream) {
      try {
        return await stream.put(id, payload, encoding);
      } catch (err) {
        if (err instanceof ChunkStreamBroken) {
          if (this.stream === stream) this.stream = undefined;
        } else if (!(isDiskvaultError(err) && isPassing(err))) throw err;
      }
    }
    return this.client.putChunk(this.sessionId, id, payload, encoding);
  }

  /** Ends the stream once every chunk is answered (call after the last put has settled). */
  async close(): Promise<void> {
    const stream = this.stream;
    this.stream = undefined;
    if (!stream) return;
    try {
      await stream.end();
    } catch {
      // Every chunk was answered before this: a connection lost now loses nothing.
      stream.destroy();
    }
  }

  /** Drops the stream at once (a failed backup); unanswered puts reject. */
  destroy(): void {
    this.stream?.destroy();
    this.stream = undefined;
  }
}
