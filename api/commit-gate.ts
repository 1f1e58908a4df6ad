import { DiskvaultError } from '../common/errors.js';

/**
 * Bounds how many commits run at once. A commit streams its manifest through checks, storage and the index
 * piece by piece; several at once share the one event loop and the index, so beyond a few they only slow
 * each other and every other request. Extra commits wait their turn (their bodies stay unread in the
 * socket, costing nothing), up to `maxWaiting` of them and for at most `maxWaitMs`; beyond that the commit
 * is refused with Unavailable (503) and a Retry-After the agent's retry honours.
 */
export class CommitGate {
  private running = 0;
  private readonly waiting: { admit: () => void; timer: NodeJS.Timeout }[] = [];

  constructor(
    readonly maxRunning: number,
    readonly maxWaiting: number,
    readonly maxWaitMs: number,
    /** Seconds a refused client is told to wait before trying again. */
    readonly retryAfterSeconds = 15,
  ) {}

  get active(): number {
    return this.running;
  }

  get queued(): number {
    return this.waiting.length;
  }

  async run<T>(fn: () => Promise<T>): Promise<T> {
    await this.acquire();
    try {
      return await fn();
    } finally {
      this.release();
    }
  }

  private acquire(): Promise<void> {
    if (this.running < this.maxRunning) {
      this.running++;
      return Promise.resolve();
    }
    if (this.waiting.length >= this.maxWaiting) return Promise.reject(this.busy());
    return new Promise((resolve, reject) => {
      const entry = {
        admit: () => {
          clearTimeout(entry.timer);
          resolve();
        },
        timer: setTimeout(() => {
          const at = this.waiting.indexOf(entry);
          if (at >= 0) this.waiting.splice(at, 1);
          reject(this.busy());
        }, this.maxWaitMs),
      };
      this.waiting.push(entry);
    });
  }

  /** Hands the slot straight to the next waiting commit, if any. */
  private release(): void {
    const next = this.waiting.shift();
    if (next) next.admit();
    else this.running--;
  }

  private busy(): DiskvaultError {
    return new DiskvaultError(
      'Unavailable',
      `the server is busy with ${this.running} commits and ${this.waiting.length} waiting; try again in ${this.retryAfterSeconds} s`,
      { retryAfterSeconds: this.retryAfterSeconds },
    );
  }
}
