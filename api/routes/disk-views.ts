import type { Server } from 'restify';
import { InvalidInputError, NotFoundError } from '../../common/errors.js';
import type { SnapshotInfo } from '../../repo-engine/types.js';
import { isGlobalAdmin, maySeeSnapshot, type Principal, tenantScope } from '../auth.js';
import { type ApiContext, query, route, sendJson } from '../context.js';
import { describeDiskSeries } from '../disk-series.js';
import { forbidden } from '../errors.js';
import { type NewData, NewDataCache } from '../new-data.js';
import type { DiskSeriesStats } from '../protocol.js';
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

/** A disk as GET /v1/disks shows it: GET /v1/stats' entry, with the newest snapshot's new data. */
export interface DiskOverview extends DiskSeriesStats {
  newest: DiskSeriesStats['newest'] & NewData;
}

export interface DisksResponse {
  disks: DiskOverview[];
}

/** Manifest pairs compared at once for GET /v1/disks. */
const NEW_DATA_CONCURRENCY = 4;

/** The snapshot filter that holds a caller to what it may read (its tenant, an agent's hosts). */
function callerScope(p: Principal): { tenant?: string; hosts?: string[] } {
  const tenant = tenantScope(p);
  return { ...(tenant !== undefined ? { tenant } : {}), ...(p.role === 'agent' ? { hosts: p.hosts } : {}) };
}

/**
 * Read-only views for the web console, with the visibility rules of GET /v1/snapshots. They share one
 * cache of each snapshot's new data.
 */
export function registerDiskViewRoutes(server: Server, ctx: ApiContext): void {
  const cache = new NewDataCache(ctx.repo);
  registerDisksRoute(server, ctx, cache);
  registerTimelineRoute(server, ctx, cache);
}

/**
 * GET /v1/disks: every disk the caller can see (as in GET /v1/stats) with its newest snapshot's new data,
 * the fleet view's "did last night's backup carry new data" column.
 */
function registerDisksRoute(server: Server, ctx: ApiContext, cache: NewDataCache): void {
  server.get(
    '/v1/disks',
    route(ctx, async (req, res, p) => {
      const scope = callerScope(p);
      const series = ctx.repo.diskSeries(scope).filter((d) => maySeeSnapshot(p, d.newest));
      // The snapshot before each newest one: one listing, grouped, instead of a query per disk.
      const previous = new Map<string, string>();
      const last = new Map<string, string>();
      for (const s of ctx.repo.listSnapshots(scope)) {
        const key = `${s.tenant}/${s.host}/${s.disk}`;
        const before = last.get(key);
        if (before !== undefined) previous.set(s.id, before);
        last.set(key, s.id);
      }
      req.socket.setTimeout(0);
      const disks: DiskOverview[] = new Array(series.length);
      // A few disks at a time: on S3 each uncached answer waits on two manifest downloads.
      let next = 0;
      const worker = async () => {
        while (next < series.length) {
          const i = next++;
          const base = describeDiskSeries(series[i]);
          const newData = await cache.get(base.newest.id, previous.get(base.newest.id));
          disks[i] = { ...base, newest: { ...base.newest, ...newData } };
        }
      };
      await Promise.all(Array.from({ length: Math.min(NEW_DATA_CONCURRENCY, series.length) }, worker));
      const out: DisksResponse = { disks };
      sendJson(res, 200, out);
    }),
  );
}

/**
 * GET /v1/timeline?host=H&disk=D[&tenant=T]: a disk's snapshots with the new data of each night, for the
 * web console's chart. Read-only, with the visibility rules of GET /v1/snapshots; a global admin names the
 * tenant when the same host and disk exist in more than one.
 */
function registerTimelineRoute(server: Server, ctx: ApiContext, cache: NewDataCache): void {
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
