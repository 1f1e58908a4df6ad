import { NotFoundError } from '../common/errors.js';
import type { Principal } from './auth.js';

interface Binding {
  tokenId: string;
  host: string;
  disk: string;
  tenant: string;
  expiresAtMs: number;
}

/**
 * Binds every upload session to the token that opened it. The engine knows sessions but not tokens; a
 * session id presented by any other token is answered exactly like an unknown one (404), so a leaked
 * session id is useless without its token. Bindings live in memory: after a server restart an agent opens
 * a new session (its already uploaded chunks still count, the engine keeps them).
 */
export class SessionRegistry {
  private readonly sessions = new Map<string, Binding>();
  /** Sessions being opened now, per token: counted against the limit before the engine answers. */
  private readonly opening = new Map<string, number>();

  /**
   * Reserves a place for a new session of `tokenId` when it holds fewer than `limit` (live or being
   * opened); call the returned release once the session is bound or failed. Otherwise the time in seconds
   * until its soonest session's lease ends, for Retry-After.
   */
  reserve(tokenId: string, limit: number, nowMs: number): { release: () => void } | { retryAfterS: number } {
    let open = this.opening.get(tokenId) ?? 0;
    let soonest = Number.POSITIVE_INFINITY;
    for (const b of this.sessions.values()) {
      if (b.tokenId !== tokenId || b.expiresAtMs <= nowMs) continue;
      open++;
      soonest = Math.min(soonest, b.expiresAtMs);
    }
    if (open >= limit) {
      const wait = Number.isFinite(soonest) ? Math.ceil((soonest - nowMs) / 1000) : 1;
      return { retryAfterS: Math.max(1, wait) };
    }
    this.opening.set(tokenId, (this.opening.get(tokenId) ?? 0) + 1);
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        const n = (this.opening.get(tokenId) ?? 1) - 1;
        if (n > 0) this.opening.set(tokenId, n);
        else this.opening.delete(tokenId);
      },
    };
  }

  bind(
    sessionId: string,
    p: Principal,
    info: { host: string; disk: string; tenant: string; expiresAt: string },
  ): void {
    this.sessions.set(sessionId, {
      tokenId: p.tokenId,
      host: info.host,
      disk: info.disk,
      tenant: info.tenant,
      expiresAtMs: Date.parse(info.expiresAt),
    });
  }

  /** The binding if this principal owns the session; NotFound otherwise (never 403: no oracle). */
  require(sessionId: string, p: Principal): Binding {
    const b = this.sessions.get(sessionId);
    if (!b || b.tokenId !== p.tokenId) throw new NotFoundError('unknown or expired session');
    return b;
  }

  renewed(sessionId: string, expiresAt: string): void {
    const b = this.sessions.get(sessionId);
    if (b) b.expiresAtMs = Date.parse(expiresAt);
  }

  forget(sessionId: string): void {
    this.sessions.delete(sessionId);
  }

  /** Drops bindings whose lease ended more than `slackMs` ago; the engine has expired them too. */
  sweep(nowMs: number, slackMs: number): void {
    for (const [id, b] of this.sessions) if (b.expiresAtMs + slackMs < nowMs) this.sessions.delete(id);
  }

  get size(): number {
    return this.sessions.size;
  }
}
