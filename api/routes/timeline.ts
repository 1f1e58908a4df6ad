import type { Server } from 'restify';
import type { SnapshotInfo } from '../../repo-engine/types.js';
import { InvalidInputError, NotFoundError } from '../../storage-adapters/errors.js';
import { isGlobalAdmin, maySeeSnapshot, tenantScope } from '../auth.js';
import { type ApiContext, query, route, sendJson } from '../context.js';
import { forbidden } from '../errors.js';
import { type NewData, NewDataCache } from '../new-data.js';
import { checkName, optionalName } from '../validation.js';

/** One snapshot of a disk's timeline: its metadata and what it added over the snapshot before it. */
export type TimelineEntry = SnapshotInfo & NewData;

export interface TimelineResponse {
  tenant: string;
  host: string;
  disk: string;
  /** Oldest first. The first snapshot's new data is all of its distinct chunks. */
  snapshots: TimelineEntry[];
}

/**
 * GET /v1/timeline?host=H&disk=D[&tenant=T]: a disk's snapshots with the new data of each night, for the
 * web console's chart. Read-only, with the visibility rules of GET /v1/snapshots; a global admin names the
 * tenant when the same host and disk exist in more than one.
 */
export function registerTimelineRoute(server: Server, ctx: ApiContext): void {
  const cache = new NewDataCache(ctx.repo);
  server.get(
    '/v1/timeline',
    route(ctx, async (req, res, p) => {
      const q = query(req);
      const host = checkName(q.get('host') ?? undefined, 'host');
      const disk = checkName(q.get('disk') ?? undefined, 'disk');
      const askedTenant = optionalName(q.get('tenant') ?? undefined, 'tenant');
      if (p.role === 'agent' && !p.hosts.includes(host))
        throw forbidden(`this token may not read host ${host}`);
      const scope = tenantScope(p);
      if (askedTenant && scope !== undefined && askedTenant !== scope)
        throw new NotFoundError(`no snapshots of ${host}/${disk}`);
      const snaps = ctx.repo
        .listSnapshots({ host, disk, ...((askedTenant ?? scope) ? { tenant: askedTenant ?? scope } : {}) })
        .filter((s) => maySeeSnapshot(p, s));
      const tenants = [...new Set(snaps.map((s) => s.tenant))];
      if (tenants.length === 0) throw new NotFoundError(`no snapshots of ${host}/${disk}`);
      if (tenants.length > 1 && isGlobalAdmin(p))
        throw new InvalidInputError(
          `${host}/${disk} exists in tenants ${tenants.join(', ')}: name one with tenant=`,
        );
      // Lifting the idle timeout: the first look at a long series reads every manifest once.
      req.socket.setTimeout(0);
      // The engine lists oldest first (by time, then id): each snapshot's predecessor is the one before it.
      const snapshots: TimelineEntry[] = [];
      for (const [i, s] of snaps.entries()) {
        snapshots.push({ ...s, ...(await cache.get(s.id, i > 0 ? snaps[i - 1].id : undefined)) });
      }
      const out: TimelineResponse = { tenant: tenants[0], host, disk, snapshots };
      sendJson(res, 200, out);
    }),
  );
}
