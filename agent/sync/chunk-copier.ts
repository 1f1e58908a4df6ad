import { DiskvaultError, isDiskvaultError } from '../../common/errors.js';
import { sealedChunkProblem } from '../../repo-engine/sealed-chunk.js';
import { checkedPlainChunk } from '../chunk-check.js';
import { ChunkSender } from '../chunk-sender.js';
import type { DiskvaultClient } from '../client.js';
import { reportDamage, verdictClause } from '../damage-report.js';
import { clientChunkFetcher } from '../restore/client-fetcher.js';
import { type StreamChunkFetcher, streamChunkFetcher } from '../restore/stream-fetcher.js';

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
 * id (decompressed to exactly the manifest's length, SHA-256), and uploaded as it came, so nothing is
 * recompressed. Downloads go over the source's fetch stream and uploads over the destination session's
 * chunk stream, as a restore's and a backup's do, each falling back to one request per chunk where a
 * server does not offer it, a stream breaks, or an upload limit is set. A plain chunk whose bytes are not
 * what its id says is reported to the source as damaged (see `reported`). `transfers` chunks are in flight
 * at once, and each holds at most its payload and its raw bytes: memory stays within transfers x (2 x the
 * largest chunk) however large the snapshot.
 */
export class ChunkCopier {
  private readonly fetcher: StreamChunkFetcher;

  constructor(
    private readonly source: DiskvaultClient,
    private readonly destination: DiskvaultClient,
    private readonly transfers: number,
    /** Once it fires (Ctrl-C), no further chunk is started and `copy` rejects with its reason. */
    private readonly signal?: AbortSignal,
  ) {
    this.fetcher = streamChunkFetcher(source, clientChunkFetcher(source), signal);
  }

  /** Ends the download stream (once every copy has settled). */
  close(): void {
    this.fetcher.close();
  }

  /**
   * Every chunk of `chunks` stored under `sessionId`; the first failure stops the others and is thrown. A fired
   * signal stops them likewise: `copy` never resolves unless every chunk was stored.
   */
  async copy(sessionId: string, chunks: ChunkRef[], onCopied: (c: ChunkRef, done: CopiedChunk) => void) {
    if (chunks.length === 0) return;
    const sender = await ChunkSender.open(this.destination, sessionId);
    // Ctrl-C cancels the uploads in flight too, as it cancels per-chunk requests.
    const cancel = () => sender.destroy();
    this.signal?.addEventListener('abort', cancel, { once: true });
    let next = 0;
    let failure: unknown;
    const worker = async () => {
      while (failure === undefined && !this.signal?.aborted && next < chunks.length) {
        const c = chunks[next++] as ChunkRef;
        try {
          onCopied(c, await this.copyOne(sender, c));
        } catch (err) {
          failure ??= err;
        }
      }
    };
    try {
      await Promise.all(Array.from({ length: Math.min(this.transfers, chunks.length) }, worker));
    } finally {
      this.signal?.removeEventListener('abort', cancel);
      if (failure === undefined && !this.signal?.aborted) await sender.close();
      else sender.destroy();
    }
    if (failure !== undefined) throw failure;
    this.signal?.throwIfAborted();
  }

  private async copyOne(sender: ChunkSender, c: ChunkRef): Promise<CopiedChunk> {
    const { encoding, payload } = await this.fetcher.fetch(c.id, c.length);
    if (encoding === 'sealed') {
      // An end-to-end chunk is copied as it is: what can be checked without its key is checked. The source
      // makes the same checks before it serves a copy, so a problem found here arose on the way and is not
      // reported (the source would take the word of a reader it cannot contradict and mark a good copy).
      const problem = sealedChunkProblem(payload, c.id, c.length, { expectRawLength: c.length });
      if (problem)
        throw new DiskvaultError('Corrupt', `chunk ${c.id} from the source is corrupt: ${problem}`, {
          chunk: c.id,
        });
      await sender.put(c.id, payload, 'sealed');
      return { sent: payload.length, raw: c.length };
    }
    try {
      await checkedPlainChunk(c.id, encoding, payload, c.length, `chunk ${c.id} from the source`);
    } catch (err) {
      if (!isDiskvaultError(err)) throw err;
      throw await this.reported(err, c.id);
    }
    await sender.put(c.id, payload, encoding);
    return { sent: payload.length, raw: c.length };
  }

  /**
   * Tells the source of a chunk whose stored bytes are not what its id says, so that it stops counting the
   * copy as stored and the next backup of a machine that has the chunk uploads it again; the error that
   * fails the snapshot ends with what the source did about it.
   */
  private async reported(damage: DiskvaultError, id: string): Promise<DiskvaultError> {
    let unreported = '';
    const [verdict] = await reportDamage(this.source, [{ chunk: id, detail: damage.message }], (line) => {
      unreported = line;
    });
    damage.message = `${damage.message}; ${verdict ? verdictClause(verdict.status) : unreported}`;
    return damage;
  }
}
