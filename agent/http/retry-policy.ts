import { randomInt } from 'node:crypto';
import type http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';

export interface RetryOptions {
  /** Attempts per request, including the first. Default 6 (about 30 s of backoff in all). */
  attempts?: number;
  /** First backoff in ms; doubled per attempt, capped at maxBackoffMs. Default 500. */
  backoffMs?: number;
  maxBackoffMs?: number;
  /**
   * The longest Retry-After (429, 503) waited for. A server asking for longer is not going to have room soon:
   * its answer is reported at once instead. Default 60 s.
   */
  maxRetryAfterMs?: number;
}

/**
 * When to send a request again and how long to wait first: capped exponential backoff with jitter, or the
 * server's own Retry-After on 429 and 503. Network errors, 5xx and 429 are retried; 4xx never (the server has
 * decided), nor 501 and 507 (retrying them only delays the answer by the whole backoff, per chunk).
 */
export class RetryPolicy {
  readonly attempts: number;
  private readonly backoffMs: number;
  private readonly maxBackoffMs: number;
  private readonly maxRetryAfterMs: number;

  constructor(o: RetryOptions = {}) {
    this.attempts = Math.max(1, o.attempts ?? 6);
    this.backoffMs = o.backoffMs ?? 500;
    this.maxBackoffMs = o.maxBackoffMs ?? 8000;
    this.maxRetryAfterMs = o.maxRetryAfterMs ?? 60_000;
  }

  /** Statuses that mean "try again later": the server or something in between is overloaded or restarting. */
  isRetryableStatus(status: number): boolean {
    return status === 429 || (status >= 500 && status !== 501 && status !== 507);
  }

  /** Backoff before attempt `attempt` (1 = the first retry): base * 2^(attempt-1), capped, jittered in its upper half. */
  backoff(attempt: number): number {
    const ceiling = Math.min(this.maxBackoffMs, this.backoffMs * 2 ** (attempt - 1));
    return Math.floor(ceiling / 2 + randomInt(Math.max(1, Math.floor(ceiling / 2))));
  }

  /**
   * The wait before retrying after an answer with `status` and `headers`: the server's Retry-After on 429/503
   * when it sends one (never less than the backoff), or null when it asks for longer than this policy waits.
   */
  waitAfter(
    attempt: number,
    status: number,
    headers: http.IncomingHttpHeaders,
    now = Date.now(),
  ): number | null {
    const backoff = this.backoff(attempt);
    if (status !== 429 && status !== 503) return backoff;
    const asked = parseRetryAfter(headers['retry-after'], now);
    if (asked === undefined) return backoff;
    if (asked > this.maxRetryAfterMs) return null;
    return Math.max(asked, backoff);
  }

  /** Sleeps `ms`; a fired `signal` ends the wait at once, rejecting with its reason. */
  async wait(ms: number, signal?: AbortSignal): Promise<void> {
    signal?.throwIfAborted();
    try {
      await sleep(ms, undefined, signal ? { signal } : undefined);
    } catch (err) {
      if (signal?.aborted) throw signal.reason;
      throw err;
    }
  }
}

/** Retry-After as milliseconds from `now`: delta-seconds or an HTTP date (RFC 9110 10.2.3); undefined if absent or unreadable. */
export function parseRetryAfter(value: string | string[] | undefined, now: number): number | undefined {
  const text = (Array.isArray(value) ? value[0] : value)?.trim();
  if (!text) return undefined;
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  const at = Date.parse(text);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}
