import { createHash } from 'node:crypto';
import { DiskvaultError, HashMismatchError } from '../../common/errors.js';
import { sealedChunkProblem } from '../../repo-engine/sealed-chunk.js';
import type { DiskvaultClient } from '../client.js';
import { decompressExactly } from '../zstd-bounded.js';

export interface ChunkRef {
  /** 64 hex. */
  id: string;
  /** Raw length, from the manifest. */
  length: number;
}

export interface CopiedChunk {
  /** Bytes sent to the destination: the payload as the source stores it (zstd, usually). */
  sent: number;
  raw: number;
}

/**
 * Copies chunks from one server to another: each downloaded as its source stores it, checked against its
 * id (decompressed within the manifest's length, SHA-256), and uploaded as it came, so nothing is
 * recompressed. `transfers` chunks are in flight at once, and each holds at most its payload and its raw
 * bytes: memory stays within transfers x (2 x the largest chunk) however large the snapshot.
 */
export class ChunkCopier {
  constructor(
    private readonly source: DiskvaultClient,
    private readonly destination: DiskvaultClient,
    private readonly transfers: number,
    /** Once it fires (Ctrl-C), no further chunk is started and `copy` rejects with its reason. */
    private readonly signal?: AbortSignal,
  ) {}

  /**
   * Every chunk of `chunks` stored under `sessionId`; the first failure stops the others and is thrown. A fired
   * signal stops them likewise: `copy` never resolves unless every chunk was stored.
   */
  async copy(sessionId: string, chunks: ChunkRef[], onCopied: (c: ChunkRef, done: CopiedChunk) => void) {
    let next = 0;
    let failure: unknown;
    const worker = async () => {
      while (failure === undefined && !this.signal?.aborted && next < chunks.length) {
        const c = chunks[next++] as ChunkRef;
        try {
          onCopied(c, await this.copyOne(sessionId, c));
        } catch (err) {
          failure ??= err;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.transfers, chunks.length) }, worker));
    if (failure !== undefined) throw failure;
    this.signal?.throwIfAborted();
  }

  private async copyOne(sessionId: string, c: ChunkRef): Promise<CopiedChunk> {
    const { encoding, payload, rawLength } = await this.source.getChunkPayload(c.id, c.length);
    if (rawLength !== c.length)
      throw new DiskvaultError(
        'Corrupt',
        `chunk ${c.id}: the source sent ${rawLength} bytes, its manifest says ${c.length}`,
        { chunk: c.id },
      );
    if (encoding === 'sealed') {
      // An end-to-end chunk is copied as it is: what can be checked without its key is checked.
      const problem = sealedChunkProblem(payload, c.id, c.length, { expectRawLength: c.length });
      if (problem)
        throw new DiskvaultError('Corrupt', `chunk ${c.id} from the source is corrupt: ${problem}`, {
          chunk: c.id,
        });
      await this.destination.putChunk(sessionId, c.id, payload, 'sealed');
      return { sent: payload.length, raw: rawLength };
    }
    const raw = encoding === 'zstd' ? await decompressExactly(payload, rawLength, `chunk ${c.id}`) : payload;
    const actual = createHash('sha256').update(raw).digest('hex');
    if (actual !== c.id)
      throw new HashMismatchError(`chunk ${c.id} from the source hashes to ${actual}`, { chunk: c.id });
    await this.destination.putChunk(sessionId, c.id, payload, encoding);
    return { sent: payload.length, raw: rawLength };
  }
}
