import { Worker } from 'node:worker_threads';
import type { Job, JobResult, WorkerInit } from './worker.js';

interface Pending {
  job: Job;
  transfer: ArrayBuffer[];
  resolve: (r: JobResult) => void;
  reject: (e: Error) => void;
}

class Thread {
  readonly worker: Worker;
  busy: Pending | null = null;
  constructor(init: WorkerInit) {
    this.worker = new Worker(new URL('./worker.js', import.meta.url), { workerData: init });
  }
}

/**
 * Threads running agent/backup/worker.ts. Jobs go to the first idle worker, or wait in a queue; results come
 * back as promises. A worker that dies fails every job it held and the pool with it (the backup aborts).
 */
export class WorkerPool {
  private readonly threads: Thread[];
  private readonly queue: Pending[] = [];
  private failure: Error | null = null;
  private seq = 0;

  constructor(size: number, init: WorkerInit) {
    this.threads = Array.from({ length: Math.max(1, size) }, () => new Thread(init));
    for (const t of this.threads) {
      t.worker.on('message', (msg: { result?: JobResult; error?: { message: string; code?: string } }) => {
        const p = t.busy;
        t.busy = null;
        if (p) {
          if (msg.error) p.reject(Object.assign(new Error(msg.error.message), { code: msg.error.code }));
          else p.resolve(msg.result!);
        }
        this.dispatch();
      });
      t.worker.on('error', (err) => this.fail(err));
      t.worker.on('exit', (code) => {
        if (code !== 0) this.fail(new Error(`a backup worker thread exited with code ${code}`));
      });
    }
  }

  /** `transfer`: buffers of the job handed to the worker (gone from this thread until the result brings them back). */
  run<T extends JobResult['type']>(
    job: Job & { type: T },
    transfer: ArrayBuffer[] = [],
  ): Promise<Extract<JobResult, { type: T }>> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.queue.push({ job, transfer, resolve: resolve as (r: JobResult) => void, reject });
      this.dispatch();
    });
  }

  private dispatch(): void {
    for (const t of this.threads) {
      if (this.queue.length === 0) return;
      if (t.busy) continue;
      const p = this.queue.shift()!;
      t.busy = p;
      t.worker.postMessage({ seq: this.seq++, job: p.job }, p.transfer);
    }
  }

  private fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    for (const t of this.threads) t.busy?.reject(err);
    for (const p of this.queue.splice(0)) p.reject(err);
  }

  async close(): Promise<void> {
    this.failure ??= new Error('worker pool closed');
    await Promise.all(this.threads.map((t) => t.worker.terminate()));
  }
}
