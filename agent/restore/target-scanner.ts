import { Worker } from 'node:worker_threads';
import { MANIFEST_ENTRY_BYTES } from '../../repo-engine/manifest-codec.js';
import type { ScanInit, ScanReply, ScanRequest } from './target-scan-worker.js';

/**
 * Main-thread side of the in-place comparison (target-scan-worker.ts). `scan(batches)` yields each batch of
 * manifest entries with its match flags, keeping a few batches in the worker ahead of the caller so the
 * comparison of what comes next overlaps with downloading and writing what differs now.
 */
export class TargetScanner {
  private readonly worker: Worker;
  private readonly waiting: { resolve: (f: Uint8Array) => void; reject: (e: Error) => void }[] = [];
  private failure: Error | undefined;

  constructor(init: ScanInit) {
    this.worker = new Worker(new URL('./target-scan-worker.js', import.meta.url), { workerData: init });
    this.worker.on('message', (msg: ScanReply) => {
      const w = this.waiting.shift();
      if (msg.t === 'matches') w?.resolve(new Uint8Array(msg.flags));
      else this.fail(new Error(`reading the target: ${msg.message}`), w);
    });
    this.worker.on('error', (err) => this.fail(err));
    this.worker.on('exit', (code) => {
      if (code !== 0) this.fail(new Error(`the target scan thread exited with code ${code}`));
    });
  }

  private fail(err: Error, first?: { reject: (e: Error) => void }): void {
    this.failure ??= err;
    first?.reject(this.failure);
    for (const w of this.waiting.splice(0)) w.reject(this.failure);
  }

  private request(entries: Buffer): Promise<Uint8Array> {
    if (this.failure) return Promise.reject(this.failure);
    const copy = Uint8Array.prototype.slice.call(entries).buffer as ArrayBuffer;
    const p = new Promise<Uint8Array>((resolve, reject) => this.waiting.push({ resolve, reject }));
    this.worker.postMessage({ t: 'batch', entries: copy } satisfies ScanRequest, [copy]);
    return p;
  }

  /**
   * Splits the manifest's batches into pieces of `piece` entries and yields each with its flags, `ahead`
   * pieces in flight. Pieces keep the worker's lead bounded (a 4096-entry batch can be 16 GiB of disk).
   */
  async *scan(
    batches: AsyncIterable<Buffer>,
    piece = 32,
    ahead = 8,
  ): AsyncGenerator<{ entries: Buffer; flags: Uint8Array }> {
    const inFlight: { entries: Buffer; flags: Promise<Uint8Array> }[] = [];
    for await (const batch of batches) {
      for (let at = 0; at < batch.length; at += piece * MANIFEST_ENTRY_BYTES) {
        const entries = batch.subarray(at, Math.min(batch.length, at + piece * MANIFEST_ENTRY_BYTES));
        const flags = this.request(entries);
        flags.catch(() => {});
        inFlight.push({ entries, flags });
        while (inFlight.length > ahead) {
          const head = inFlight.shift()!;
          yield { entries: head.entries, flags: await head.flags };
        }
      }
    }
    for (const head of inFlight) yield { entries: head.entries, flags: await head.flags };
  }

  async close(): Promise<void> {
    await this.worker.terminate();
  }
}
