import type { Server } from 'restify';
import { NotFoundError } from '../../common/errors.js';
import { maySeeSnapshot, requireAdmin } from '../auth.js';
import { type ApiContext, param, route, sendJson } from '../context.js';
import type { SnapshotResponse } from '../protocol.js';
import { checkId } from '../validation.js';

/**
 * Protected snapshots: PUT /v1/snapshots/:id/protection protects, DELETE lifts it; both answer the snapshot
 * as it is afterwards and are idempotent. Admins only (a tenant admin for its tenant's snapshots); forget,
 * delete and gc never remove a protected snapshot.
 */
export function registerProtectRoutes(server: Server, ctx: ApiContext): void {
  const { repo } = ctx;
  for (const [method, protect] of [
    ['put', true],
    ['del', false],
  ] as const) {
    server[method](
      '/v1/snapshots/:id/protection',
      route(ctx, async (req, res, p) => {
        requireAdmin(p);
        const id = checkId(param(req, 'id'), 'snapshot id');
        const snap = repo.getSnapshot(id);
        // Another tenant's snapshot reads as absent, as everywhere.
        if (!snap || !maySeeSnapshot(p, snap)) throw new NotFoundError(`snapshot ${id} not found`);
        const out: SnapshotResponse = { snapshot: await repo.setProtected(id, protect) };
        sendJson(res, 200, out);
      }),
    );
  }
}
