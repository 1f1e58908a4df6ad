import { pipeline, type Readable, Transform } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * A token bucket shared by every request of one direction (uploads or downloads), so that N uploads in flight
 * together stay under the limit, as restic's --limit-upload does. Takers are served in arrival order: a large
 * request cannot starve small ones, and none overtakes another.
 *
 * The bucket starts full and holds at most `burst` bytes (a quarter of a second of traffic, at least 64 KiB):
 * enough that pieces of a chunk flow without a timer each, small enough that a link's queue never sees more
 * than that above the rate.
 */
export class RateLimiter {
  private tokens: number;
  private last = performance.now();
  private queue: Promise<void> = Promise.resolve();
  /** Takers queued behind an empty bucket; while there are none, a taker the bucket covers goes at once. */
  private waiting = 0;
  readonly burst: number;

  constructor(readonly bytesPerSecond: number) {
    if (!(bytesPerSecond > 0)) throw new RangeError(`a rate limit must be positive, not ${bytesPerSecond}`);
    this.burst = Math.max(64 * 1024, Math.floor(bytesPerSecond / 4));
    this.tokens = this.burst;
  }

  /**
   * undefined when `bytes` may go now, else a promise that resolves when they may (a taker larger than the
   * bucket goes as soon as the bucket is full). Going at once without a promise keeps a limit set far above
   * what the link reaches nearly free.
   */
  take(bytes: number): Promise<void> | undefined {
    const needed = Math.min(bytes, this.burst);
    if (this.waiting === 0) {
      this.refill();
      if (this.tokens >= needed) {
        this.tokens -= bytes;
        return undefined;
      }
    }
    this.waiting++;
    const turn = this.queue
      .then(() => this.wait(needed, bytes))
      .finally(() => {
        this.waiting--;
      });
    this.queue = turn;
    return turn;
  }

  private async wait(needed: number, bytes: number): Promise<void> {
    this.refill();
    // Until the bucket really holds them: a timer can fire a few milliseconds early, since the event loop
    // reads its clock once a turn, and bytes let through early would be bytes over the limit.
    while (this.tokens < needed) {
      await sleep(Math.max(1, Math.ceil(((needed - this.tokens) * 1000) / this.bytesPerSecond)));
      this.refill();
    }
    // Going below zero is how a taker larger than the bucket is paid for: later takers wait for it.
    this.tokens -= bytes;
  }

  private refill(): void {
    const now = performance.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) * this.bytesPerSecond) / 1000);
    this.last = now;
  }
}

/** Piece size in which limited bodies are sent and received: smooth on a slow link, cheap on a fast one. */
export const LIMITED_PIECE_BYTES = 64 * 1024;

/** `body`'s bytes in pieces of at most LIMITED_PIECE_BYTES, each let go by `limiter`. */
export async function* paced(
  body: Buffer | AsyncIterable<Buffer>,
  limiter: RateLimiter,
): AsyncGenerator<Buffer> {
  const parts = Buffer.isBuffer(body) ? [body] : body;
  for await (const part of parts) {
    for (let at = 0; at < part.length; at += LIMITED_PIECE_BYTES) {
      const piece = part.subarray(at, at + LIMITED_PIECE_BYTES);
      const wait = limiter.take(piece.length);
      if (wait) await wait;
      yield piece;
    }
  }
}

/**
 * `source` passed through `limiter`: a response body read no faster than the limit, so the socket's buffer
 * fills and TCP slows the server down. Destroying the result destroys the source; its errors come through.
 */
export function pacedStream(source: Readable, limiter: RateLimiter): Readable {
  const out = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      const wait = limiter.take(chunk.length);
      if (wait) wait.then(() => done(null, chunk), done);
      else done(null, chunk);
    },
  });
  pipeline(source, out, () => {});
  return out;
}

/**
 * A rate as the --limit-upload / --limit-download flags take it: a plain number is KiB/s, as in restic, so
 * existing scripts carry over; with a unit (500K, 20M, 1G, 20MiB, optionally followed by /s) it is bytes per
 * second with binary units. Returns null for "0" (no limit), as restic does.
 */
export function parseRate(text: string): number | null {
  const t = text.trim();
  const plain = /^\d+$/.exec(t);
  if (plain) {
    const kib = Number(t);
    return kib === 0 ? null : kib * 1024;
  }
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT])(?:i?B)?(?:\/s)?$/i.exec(t);
  if (!m)
    throw new RangeError(
      `invalid rate '${text}': expected KiB/s (restic's form, e.g. 2048) or 500K, 20M, 1G`,
    );
  const bytes = Math.floor(Number(m[1]) * 1024 ** ('KMGT'.indexOf(m[2].toUpperCase()) + 1));
  if (!Number.isSafeInteger(bytes)) throw new RangeError(`rate '${text}' is out of range`);
  return bytes === 0 ? null : bytes;
}
