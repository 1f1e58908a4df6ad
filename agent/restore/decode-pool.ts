import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { DiskvaultError, type ErrorCode } from '../../common/errors.js';
import { type BufferRecycler, ownedArrayBuffer } from '../../repo-engine/buffer-recycler.js';
import type { ChunkOpeningKeys } from './chunk-decoder.js';
import type { FetchedChunk } from './chunk-fetcher.js';
import type { DecodeJob, DecodeReply } from './decode-worker.js';

/**
 * Decompression and the per-chunk SHA-256 on worker threads: on a restore they cost more than everything
 * else the agent does, and on the main thread they would cap the restore at one core. Jobs go round-robin;
 * payloads and results are transferred, not copied. With a recycler, each chunk is decompressed into a
 * recycled buffer and the payload's buffer comes back for reuse.
 */
export class DecodePool {
  private readonly workers: Worker[];
  private readonly pending = new Map<number, { resolve: (b: Buffer) => void; reject: (e: Error) => void }>();
  private seq = 0;
  private failure: Error | undefined;

  constructor(
    size = Math.max(2, Math.min(4, availableParallelism())),
    private readonly recycler?: BufferRecycler,
    /** An end-to-end restore's keys: the workers open sealed chunks with them. */
    e2e?: ChunkOpeningKeys,
  ) {
    this.workers = Array.from({ length: size }, () => {
      const w = new Worker(new URL('./decode-worker.js', import.meta.url), { workerData: { e2e } });
      w.on('message', (msg: DecodeReply) => {
        for (const ab of msg.spare) this.recycler?.give(ab);
        if ('raw' in msg) this.recycler?.adopt(msg.raw);
        const p = this.pending.get(msg.seq);
        this.pending.delete(msg.seq);
        if (!p) return;
        if ('raw' in msg) p.resolve(Buffer.from(msg.raw, 0, msg.length));
        else
          p.reject(
            new DiskvaultError(
              (msg.error.code as ErrorCode | undefined) ?? 'Corrupt',
              msg.error.message,
              msg.error.details,
            ),
          );
      });
      w.on('error', (err) => this.fail(err));
      w.on('exit', (code) => {
        if (code !== 0) this.fail(new Error(`a chunk decoding thread exited with code ${code}`));
      });
      return w;
    });
  }

  private fail(err: Error): void {
    this.failure ??= err;
    for (const p of this.pending.values()) p.reject(this.failure);
    this.pending.clear();
  }

  decode(fetched: FetchedChunk, id: string, length: number): Promise<Buffer> {
    if (this.failure) return Promise.reject(this.failure);
    const seq = this.seq++;
    const buf = fetched.payload;
    const payload =
      this.recycler?.transferable(buf) ??
      ownedArrayBuffer(buf) ??
      (Uint8Array.prototype.slice.call(buf).buffer as ArrayBuffer);
    const into = fetched.encoding !== 'raw' ? this.recycler?.take(length) : undefined;
    const job: DecodeJob = {
      seq,
      id,
      length,
      encoding: fetched.encoding,
      payload,
      payloadLength: buf.length,
      into,
    };
    return new Promise<Buffer>((resolve, reject) => {
      this.pending.set(seq, { resolve, reject });
      this.workers[seq % this.workers.length].postMessage(job, into ? [payload, into] : [payload]);
    });
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}
