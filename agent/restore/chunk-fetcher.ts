/**
 * What the restore core needs from a repository: one chunk's stored payload by id. The core decodes and
 * checks it itself, so a fetcher may be dumb (an in-memory map in tests, the HTTP client in the CLI) and the
 * same hash check guards both.
 */
export interface FetchedChunk {
  /** 'sealed': an end-to-end sealed chunk, opened with the restore's key (agent/e2e/chunk-sealing.ts). */
  encoding: 'raw' | 'zstd' | 'sealed';
  payload: Buffer;
  /** True when the fetcher already checked SHA-256(raw) === id on these very bytes (the core then skips it). */
  verified?: boolean;
}

/** Where a fetcher may take the buffer for a payload from, so that buffers are reused rather than allocated. */
export interface PayloadBuffers {
  takeBuffer(length: number): Buffer;
}

export interface ChunkFetcher {
  /** `length` is the raw length the manifest promises: the fetcher may use it to bound what it accepts. */
  fetch(id: string, length: number, buffers?: PayloadBuffers): Promise<FetchedChunk>;
}
