import { InvalidInputError } from '../common/errors.js';
import type { ApiContext } from './context.js';

/** A session is renewed in the registry at most this often by uploads (the engine renews it on each). */
const RENEW_EVERY_MS = 1_000;
const lastRenewal = new WeakMap<ApiContext, Map<string, number>>();

/**
 * Stores one uploaded chunk for a session whose binding the caller has checked: the one path every upload
 * takes, one request per chunk (PUT /v1/chunks/:id) or the chunk stream, so both are checked alike (the
 * engine's putChunk: canonical zstd frame, content hash, session rules). Returns the engine's answer.
 */
export async function storeUploadedChunk(
  ctx: ApiContext,
  sid: string,
  id: string,
  payload: Buffer,
  encoding: 'raw' | 'zstd' | 'sealed',
): Promise<{ stored: boolean; written: boolean }> {
  if (payload.length === 0) throw new InvalidInputError('empty chunk body');
  renewSession(ctx, sid);
  const result = await ctx.repo.putChunk(sid, id, payload, encoding);
  if (result.written) ctx.metrics.chunksStored++;
  else ctx.metrics.chunksDeduplicated++;
  return result;
}

/**
 * Keeps the registry's view of the session's lease current; the engine extends the lease itself on every
 * upload, so a second look at the index per chunk is only needed now and then.
 */
function renewSession(ctx: ApiContext, sid: string): void {
  let seen = lastRenewal.get(ctx);
  if (!seen) {
    seen = new Map();
    lastRenewal.set(ctx, seen);
  }
  const now = Date.now();
  const last = seen.get(sid);
  if (last !== undefined && now - last < RENEW_EVERY_MS) return;
  const info = ctx.repo.touchSession(sid);
  ctx.sessions.renewed(sid, info.expiresAt);
  // Sessions end without telling this map: entries past any lease are dropped once in a while.
  if (seen.size > 4096) for (const [k, t] of seen) if (now - t > 60 * 60_000) seen.delete(k);
  seen.set(sid, now);
}
