import type { Server } from 'restify';
import { CHUNK_FETCH_PROTOCOL } from '../../common/chunk-stream.js';
import { DiskvaultError, NotFoundError } from '../../common/errors.js';
import type { SnapshotLeaseInfo } from '../../repo-engine/types.js';
import { maySeeSnapshot, type Principal } from '../auth.js';
import { type ApiContext, param, route, sendJson, sendNoContent } from '../context.js';
import type { SnapshotLeaseResponse } from '../protocol.js';
import { checkId } from '../validation.js';

/**
 * Snapshot leases: a reader (restore, NBD export) holds one snapshot's chunks while it reads, even if the
 * snapshot is forgotten and gc runs meanwhile. Taking one needs only the right to read the snapshot; a
 * lease is renewed and released by the token that took it. A snapshot or lease the caller may not see
 * reads as absent (404), as everywhere else.
 */
export function registerLeaseRoutes(server: Server, ctx: ApiContext): void {
  const { repo } = ctx;

  /** The lease if this principal took it; NotFound otherwise (never 403: no oracle). */
  const ownLease = (p: Principal, id: string): SnapshotLeaseInfo => {
    const lease = repo.getLease(id);
    if (!lease || lease.owner !== p.tokenId) throw new NotFoundError(`lease ${id} is unknown or has ended`);
    return lease;
  };

  server.post(
    '/v1/snapshots/:id/lease',
    route(ctx, async (req, res, p) => {
      const id = checkId(param(req, 'id'), 'snapshot id');
      const snap = repo.getSnapshot(id);
      if (!snap || !maySeeSnapshot(p, snap)) throw new NotFoundError(`snapshot ${id} not found`);
      const held = repo.countLeases(p.tokenId);
      if (held >= ctx.maxSessionsPerToken) {
        res.setHeader('retry-after', '60');
        throw new DiskvaultError(
          'TooManyRequests',
          `this token already holds ${held} snapshot leases (the server's --max-sessions-per-token); release one, or wait for one to end`,
          { limit: ctx.maxSessionsPerToken },
        );
      }
      const lease = await repo.takeLease(snap.id, p.tokenId);
      sendJson(res, 201, toResponse(lease, ctx));
    }),
  );

  server.post(
    '/v1/leases/:id',
    route(ctx, async (req, res, p) => {
      const id = checkId(param(req, 'id'), 'lease id');
      ownLease(p, id);
      sendJson(res, 200, toResponse(repo.renewLease(id), ctx));
    }),
  );

  server.del(
    '/v1/leases/:id',
    route(ctx, async (req, res, p) => {
      const id = checkId(param(req, 'id'), 'lease id');
      ownLease(p, id);
      await repo.releaseLease(id);
      sendNoContent(res);
    }),
  );
}

/** A reader holding a lease is about to fetch the snapshot's chunks: the answer says how it may. */
function toResponse(l: SnapshotLeaseInfo, ctx: ApiContext): SnapshotLeaseResponse {
  return {
    leaseId: l.id,
    snapshot: l.snapshot,
    expiresAt: l.expiresAt,
    ...(ctx.chunkFetchStream !== false ? { chunkFetchStream: CHUNK_FETCH_PROTOCOL } : {}),
  };
}
