import { pipeline } from 'node:stream/promises';
import type { Server } from 'restify';
import { NotFoundError } from '../../common/errors.js';
import type { SnapshotInfo } from '../../repo-engine/types.js';
import { maySeeSnapshot, type Principal, requireAdmin, tenantScope } from '../auth.js';
import { type ApiContext, param, query, route, sendJson, sendNoContent } from '../context.js';
import { forbidden } from '../errors.js';
import { MANIFEST_CONTENT_TYPE } from '../protocol.js';
import { checkId, optionalName } from '../validation.js';

/** Snapshot listing, metadata, manifest download and deletion. */
export function registerSnapshotRoutes(server: Server, ctx: ApiContext): void {
  const { repo } = ctx;

  /** Another host's or tenant's snapshot reads as absent: its id must not be confirmable. */
  const visibleSnapshot = (p: Principal, id: string): SnapshotInfo => {
    const snap = repo.getSnapshot(id);
    if (!snap || !maySeeSnapshot(p, snap)) throw new NotFoundError(`snapshot ${id} not found`);
    return snap;
  };

  server.get(
    '/v1/snapshots',
    route(ctx, async (req, res, p) => {
      const q = query(req);
      const host = optionalName(q.get('host') ?? undefined, 'host');
      const disk = optionalName(q.get('disk') ?? undefined, 'disk');
      if (host && p.role === 'agent' && !p.hosts.includes(host))
        throw forbidden(`this token may not read host ${host}`);
      const snapshots = repo
        .listSnapshots({
          ...(host ? { host } : {}),
          ...(disk ? { disk } : {}),
          ...(p.role === 'agent' ? { hosts: p.hosts } : {}),
          ...(tenantScope(p) !== undefined ? { tenant: tenantScope(p) } : {}),
        })
        // The filter above is the engine's; this is the API's own guarantee, whatever the engine does.
        .filter((s) => maySeeSnapshot(p, s));
      sendJson(res, 200, { snapshots });
    }),
  );

  server.get(
    '/v1/snapshots/:id',
    route(ctx, async (req, res, p) => {
      sendJson(res, 200, { snapshot: visibleSnapshot(p, checkId(param(req, 'id'), 'snapshot id')) });
    }),
  );

  server.get(
    '/v1/snapshots/:id/manifest',
    route(ctx, async (req, res, p) => {
      const snap = visibleSnapshot(p, checkId(param(req, 'id'), 'snapshot id'));
      const stream = await repo.openManifest(snap.id);
      res.statusCode = 200;
      res.setHeader('content-type', MANIFEST_CONTENT_TYPE);
      // A failure half way destroys the response: the client sees a cut body and the trailer hash fails.
      await pipeline(stream, res);
    }),
  );

  server.del(
    '/v1/snapshots/:id',
    route(ctx, async (req, res, p) => {
      requireAdmin(p);
      const snap = visibleSnapshot(p, checkId(param(req, 'id'), 'snapshot id'));
      await repo.deleteSnapshot(snap.id);
      sendNoContent(res);
    }),
  );
}
