import { setTimeout as sleep } from 'node:timers/promises';
import type { Server } from 'restify';
import { InvalidInputError, isDiskvaultError, NotFoundError } from '../../common/errors.js';
import type {
  ForgetPlan,
  GcReport,
  RepositoryApi,
  SnapshotInfo,
  VerifyProgress,
} from '../../repo-engine/types.js';
import {
  isGlobalAdmin,
  isReader,
  maySeeSnapshot,
  requireAdmin,
  requireGlobalAdmin,
  tenantScope,
} from '../auth.js';
import { readJson } from '../body.js';
import { type ApiContext, param, route, sendJson } from '../context.js';
import { describeDiskSeries } from '../disk-series.js';
import type { JobStatus } from '../jobs.js';
import type { ForgetResponse, JobInfo, StatsResponse } from '../protocol.js';
import { ALL_TENANTS } from '../token-store.js';
import { asObject, checkId, checkPolicy, optionalName } from '../validation.js';

function optionalBool(v: unknown, what: string): boolean {
  if (v === undefined) return false;
  if (typeof v !== 'boolean') throw new InvalidInputError(`${what} must be true or false`);
  return v;
}

/** `removeOnly`: the snapshot ids a client previewed for removal, at most this many. */
const MAX_REMOVE_ONLY = 100_000;

function optionalIdList(v: unknown, what: string): Set<string> | undefined {
  if (v === undefined) return undefined;
  if (!Array.isArray(v) || v.length > MAX_REMOVE_ONLY)
    throw new InvalidInputError(`${what} must be a list of at most ${MAX_REMOVE_ONLY} snapshot ids`);
  return new Set(v.map((id) => checkId(id, `${what} entry`)));
}

/**
 * `plan` limited to removing the snapshots in `allowed` (those a client previewed): one the fresh plan would
 * remove but the preview kept (a backup committed meanwhile moved the buckets) is kept, with its reason.
 */
function limitRemovals(plan: ForgetPlan, allowed: Set<string>): ForgetPlan {
  return {
    groups: plan.groups.map((g) => ({
      ...g,
      keep: [
        ...g.keep,
        ...g.remove
          .filter((s) => !allowed.has(s.id))
          .map((snapshot) => ({ snapshot, reasons: ['not removed in the previewed plan'] })),
      ],
      remove: g.remove.filter((s) => allowed.has(s.id)),
    })),
  };
}

function jobInfo(j: JobStatus): JobInfo {
  const { tokenId: _owner, ...rest } = j;
  return rest as JobInfo;
}

/**
 * Runs gc once the one running (a forget's prune, another admin's gc) has finished: what this request
 * freed must be considered by a run that starts after it.
 */
async function gcWhenFree(repo: RepositoryApi, onProgress: (p: VerifyProgress) => void): Promise<GcReport> {
  for (;;) {
    try {
      return await repo.gc({ onProgress });
    } catch (err) {
      if (!(isDiskvaultError(err) && err.code === 'Conflict')) throw err;
      onProgress({ phase: 'waiting for the running gc', done: 0, total: 0 });
      await sleep(250);
    }
  }
}

function perHost(snaps: SnapshotInfo[]): StatsResponse['perHost'] {
  const by = new Map<string, { host: string; snapshots: number; logicalBytes: number }>();
  for (const s of snaps) {
    const e = by.get(s.host) ?? { host: s.host, snapshots: 0, logicalBytes: 0 };
    e.snapshots++;
    e.logicalBytes += s.size;
    by.set(s.host, e);
  }
  return [...by.values()].sort((a, b) => a.host.localeCompare(b.host));
}

/**
 * Retention, gc, verify jobs and statistics. gc and verify span every tenant, so they need a global admin;
 * forget and snapshot deletion are tenant-scoped for tenant admins.
 */
export function registerAdminRoutes(server: Server, ctx: ApiContext): void {
  const { repo } = ctx;

  server.post(
    '/v1/forget',
    route(ctx, async (req, res, p) => {
      requireAdmin(p);
      const body = asObject(await readJson(req));
      const policy = checkPolicy(body.policy);
      const host = optionalName(body.host, 'host');
      const disk = optionalName(body.disk, 'disk');
      const dryRun = optionalBool(body.dryRun, 'dryRun');
      const prune = optionalBool(body.prune, 'prune');
      const removeOnly = optionalIdList(body.removeOnly, 'removeOnly');
      // Checked before anything is applied, so a refused prune leaves no half-done forget behind.
      if (prune) requireGlobalAdmin(p);
      const tenant = tenantScope(p);
      const fresh = repo.planForget(policy, {
        ...(host ? { host } : {}),
        ...(disk ? { disk } : {}),
        ...(tenant ? { tenant } : {}),
      });
      const plan = removeOnly ? limitRemovals(fresh, removeOnly) : fresh;
      // The engine filtered by tenant; refuse to act if it ever handed back something outside the scope.
      for (const g of plan.groups) {
        for (const s of [...g.remove, ...g.keep.map((k) => k.snapshot)]) {
          if (!maySeeSnapshot(p, s))
            throw new Error(`forget plan names snapshot ${s.id} outside the caller's tenant`);
        }
      }
      const out: ForgetResponse = { plan, dryRun, removed: 0 };
      if (!dryRun && prune) {
        // Removing many snapshots and collecting their chunks can take long: a job, polled like verify.
        const job = ctx.jobs.start(
          'forget',
          p.tokenId,
          async (onProgress) => {
            out.removed = (await repo.applyForget(plan, { onProgress })).removed;
            out.gc = await gcWhenFree(repo, onProgress);
            return out;
          },
          { shared: false },
        );
        sendJson(res, 202, { job: jobInfo(job) });
        return;
      }
      if (!dryRun) {
        req.socket.setTimeout(0);
        out.removed = (await repo.applyForget(plan)).removed;
      }
      sendJson(res, 200, out);
    }),
  );

  server.post(
    '/v1/gc',
    route(ctx, async (_req, res, p) => {
      requireGlobalAdmin(p);
      const job = ctx.jobs.start('gc', p.tokenId, (onProgress) => gcWhenFree(repo, onProgress));
      sendJson(res, 202, { job: jobInfo(job) });
    }),
  );

  server.post(
    '/v1/verify',
    route(ctx, async (req, res, p) => {
      requireGlobalAdmin(p);
      const readData = optionalBool(asObject(await readJson(req)).readData, 'readData');
      // A verify that reads every chunk is other work than one that does not: neither answers for the other.
      const job = ctx.jobs.start('verify', p.tokenId, (onProgress) => repo.verify({ readData, onProgress }), {
        what: readData ? 'verify --read-data' : 'verify',
      });
      sendJson(res, 202, { job: jobInfo(job) });
    }),
  );

  server.get(
    '/v1/jobs/:id',
    route(ctx, async (req, res, p) => {
      requireAdmin(p);
      const id = checkId(param(req, 'id'), 'job id');
      const job = ctx.jobs.get(id);
      if (!job || (!isGlobalAdmin(p) && job.tokenId !== p.tokenId))
        throw new NotFoundError(`job ${id} not found`);
      sendJson(res, 200, { job: jobInfo(job) });
    }),
  );

  server.get(
    '/v1/stats',
    route(ctx, async (_req, res, p) => {
      // A global reader sees what a global admin sees: statistics change nothing.
      if (isGlobalAdmin(p) || (isReader(p) && p.tenant === ALL_TENANTS)) {
        const s = repo.stats();
        const out: StatsResponse = {
          scope: 'repository',
          snapshots: s.snapshots,
          logicalBytes: s.logicalBytes,
          perHost: s.perHost,
          disks: repo.diskSeries().map(describeDiskSeries),
          repository: s,
        };
        sendJson(res, 200, out);
        return;
      }
      const scope = { tenant: p.tenant, ...(p.role === 'agent' ? { hosts: p.hosts } : {}) };
      const snaps = repo.listSnapshots(scope).filter((s) => maySeeSnapshot(p, s));
      const out: StatsResponse = {
        scope: p.role === 'agent' ? 'hosts' : 'tenant',
        snapshots: snaps.length,
        logicalBytes: snaps.reduce((n, s) => n + s.size, 0),
        perHost: perHost(snaps),
        disks: repo.diskSeries(scope).map(describeDiskSeries),
      };
      // Computed over the tenant's own snapshots and chunks only: another tenant storing one of its chunks
      // must not change any figure here.
      if (p.role !== 'agent') out.tenant = repo.tenantStats(p.tenant);
      sendJson(res, 200, out);
    }),
  );

  server.get(
    '/metrics',
    route(ctx, async (_req, res, p) => {
      requireGlobalAdmin(p);
      const text = ctx.metrics.render(repo, { sessions: ctx.sessions.size, jobs: ctx.jobs.running() });
      res.statusCode = 200;
      res.setHeader('content-type', 'text/plain; version=0.0.4; charset=utf-8');
      res.setHeader('content-length', Buffer.byteLength(text));
      res.end(text);
    }),
  );

  server.get(
    '/v1/health',
    route(
      ctx,
      async (_req, res) => {
        sendJson(res, 200, { status: 'ok' });
      },
      { auth: false },
    ),
  );
}
