import { Worker } from 'node:worker_threads';
import { type BufferRecycler, ownedArrayBuffer } from '../../repo-engine/buffer-recycler.js';
import type { HashMessage, HashReply } from './image-hash-worker.js';

/**
 * Feeds the whole-image SHA-256 in image order while the main thread keeps downloading and writing. Bytes
 * are transferred to the worker only after their write has finished (a transferred buffer is gone from this
 * thread), and at most `maxQueued` bytes wait in the worker, so a slow hash holds the restore back instead
 * of piling up memory. Hashed buffers come back to the recycler, if there is one.
 */
export class ImageHasher {
  private readonly worker: Worker;
  private posted = 0;
  private hashed = 0;
  /** Keeps posts in image order even though the writes they wait for finish in any order. */
  private tail: Promise<void> = Promise.resolve();
  private failure: Error | undefined;
  private waiters: (() => void)[] = [];
  private digestWaiter: { resolve: (s: string) => void; reject: (e: Error) => void } | undefined;

  constructor(
    private readonly maxQueued = 64 * 1024 * 1024,
    private readonly recycler?: BufferRecycler,
  ) {
    this.worker = new Worker(new URL('./image-hash-worker.js', import.meta.url));
    this.worker.on('message', (msg: HashReply) => {
      if (msg.t === 'release') {
        this.recycler?.give(msg.buf);
        return;
      }
      if (msg.t === 'ack') this.hashed = msg.hashed;
      else if (msg.t === 'digest') this.digestWaiter?.resolve(msg.sha256);
      else this.fail(new Error(`image hash: ${msg.message}`));
      this.wake();
    });
    this.worker.on('error', (err) => this.fail(err));
    this.worker.on('exit', (code) => {
      if (code !== 0) this.fail(new Error(`the image hash thread exited with code ${code}`));
    });
  }

  private fail(err: Error): void {
    this.failure ??= err;
    this.digestWaiter?.reject(this.failure);
    this.wake();
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  private post(msg: HashMessage, length: number, transfer: ArrayBuffer[] = []): void {
    this.posted += length;
    this.worker.postMessage(msg, transfer);
  }

  /**
   * Hashes `buf` once `written` settles. With `transfer` the buffer is handed over (the caller must never
   * touch it again); otherwise, or when it is a view into a larger buffer, it is copied now.
   */
  bytes(buf: Buffer, written: Promise<unknown> = Promise.resolve(), transfer = true): void {
    if (!transfer) buf = Buffer.from(buf);
    this.tail = this.tail.then(async () => {
      await written.catch(() => {});
      const ab =
        this.recycler?.transferable(buf) ??
        ownedArrayBuffer(buf) ??
        (Uint8Array.prototype.slice.call(buf).buffer as ArrayBuffer);
      this.post({ t: 'bytes', buf: ab, length: buf.length }, buf.length, [ab]);
    });
  }

  zeros(length: number): void {
    this.tail = this.tail.then(() => this.post({ t: 'zeros', length }, length));
  }

  /** Bytes already on disk: the worker reads them back itself (from the page cache, just read). */
  fromFile(
    path: string,
    offset: number,
    length: number,
    written: Promise<unknown> = Promise.resolve(),
  ): void {
    this.tail = this.tail.then(async () => {
      await written.catch(() => {});
      this.post({ t: 'file', path, offset, length }, length);
    });
  }

  /** Resolves when the worker has caught up enough to take more. */
  async ready(): Promise<void> {
    while (!this.failure && this.posted - this.hashed > this.maxQueued) {
      await new Promise<void>((r) => this.waiters.push(r));
    }
    if (this.failure) throw this.failure;
  }

  async digest(): Promise<string> {
    await this.tail;
    if (this.failure) throw this.failure;
    const result = new Promise<string>((resolve, reject) => {
      this.digestWaiter = { resolve, reject };
    });
    this.worker.postMessage({ t: 'end' } satisfies HashMessage);
    return await result;
  }

  async close(): Promise<void> {
    await this.worker.terminate();
  }
}
