/**
 * The agent protocol as both sides see it: paths, headers and bodies. The server (api/) and the agent
 * (agent/) import these so the two cannot drift apart. Every route lives under /v1; errors are always
 * `{ code, message, details? }` JSON with the status from api/errors.ts.
 */
import type { ChunkerParams } from '../repo-engine/manifest-codec.js';
import type { SnapshotInfo } from '../repo-engine/types.js';

export type { ChunkerParams, SnapshotInfo };

export const DEFAULT_PORT = 8420;
/** Content type of a commit body and of a manifest download: the binary manifest (repo-engine/manifest-codec.ts). */
export const MANIFEST_CONTENT_TYPE = 'application/x-diskvault-manifest';
/** PUT /v1/chunks/:id?session=SID with `Content-Encoding: zstd` when the body is compressed. */
export const CHUNK_CONTENT_TYPE = 'application/octet-stream';
/** Sent with every chunk download: the raw length, so the client can bound its decompression. */
export const RAW_LENGTH_HEADER = 'x-diskvault-raw-length';
/** Most ids one missing query may carry. */
export const MAX_MISSING_IDS = 50_000;

/** Chunks one damage report may name. */
export const MAX_DAMAGE_REPORTS = 1000;

/**
 * `POST /v1/chunks/damaged`: chunks a reader found wrong (a restore, `verify --key`), each with what it
 * found; the server's verdict on each comes back (repo-engine Repository.reportDamage).
 */
export interface DamageReportRequest {
  chunks: { id: string; detail: string }[];
}

export interface DamageReportResponse {
  /** damaged: nobody has it until the next upload of it replaces it; good: the stored copy checks out. */
  chunks: { id: string; status: 'damaged' | 'good' | 'absent' }[];
}

/** POST /v1/sessions */
export interface CreateSessionRequest {
  host: string;
  disk: string;
  /**
   * An end-to-end session: `proof` (base64, 32 bytes) is the upload proof derived from the key file, whose
   * hash is the key's public id (repo-engine/sealed-chunk.ts keyIdOfProof); an admin copying sealed
   * snapshots as they are (sync) may give the `keyId` itself instead.
   */
  e2e?: { proof: string } | { keyId: string };
}
export interface CreateSessionResponse {
  id: string;
  chunker: ChunkerParams;
  expiresAt: string;
  previous: SnapshotInfo | null;
  /**
   * The chunk stream protocol this server accepts uploads of the session over (common/chunk-stream.ts);
   * absent from servers that only take one request per chunk.
   */
  chunkStream?: string;
  /** The key id of an end-to-end session. */
  keyId?: string;
}

/**
 * POST /v1/sessions/:id/missing with this content type: the ids as consecutive 32-byte binary SHA-256
 * values, answered in the same form (the missing ones, each once, in the order asked). Half the bytes of
 * the JSON form and no hex to parse or check on either side; the agent uses it.
 */
export const IDS_CONTENT_TYPE = 'application/x-diskvault-ids';
/** Bytes of one id in an IDS_CONTENT_TYPE body. */
export { ID_BYTES } from '../repo-engine/manifest-codec.js';

/** POST /v1/sessions/:id/missing */
export interface MissingRequest {
  ids: string[];
}
export interface MissingResponse {
  missing: string[];
}

/** PUT /v1/chunks/:id?session=SID -> 201 when stored, 200 when already present. */
export interface PutChunkResponse {
  id: string;
  stored: boolean;
}

/**
 * POST /v1/sessions/:id/commit, body: binary manifest without `id` -> 201 { snapshot }.
 * 409 Conflict with details.missing = ids (at most 1,000) the repository does not hold: upload them, commit again.
 */
export interface CommitResponse {
  snapshot: SnapshotInfo;
}

/**
 * GET /v1/snapshots/:id, and PUT / DELETE /v1/snapshots/:id/protection (admin): the snapshot; `protected`
 * says whether forget, delete and gc leave it alone. DELETE /v1/snapshots/:id of a protected snapshot is
 * 409 Conflict with details.reason 'protected'.
 */
export interface SnapshotResponse {
  snapshot: SnapshotInfo;
}

export interface ErrorBody {
  code: string;
  message: string;
  details?: Record<string, unknown>;
}

/* Admin routes (added by the API engineer; additive). */
import type {
  ForgetPlan,
  GcReport,
  RepoStats,
  RetentionPolicy,
  TenantStats,
  VerifyProgress,
  VerifyReport,
} from '../repo-engine/types.js';

export type { ForgetPlan, GcReport, RepoStats, RetentionPolicy, TenantStats, VerifyProgress, VerifyReport };

/**
 * POST /v1/forget (admin). Without dryRun the plan is applied: 200 ForgetResponse. With prune (global admin)
 * it runs as a job, 202 { job }, whose result is the ForgetResponse including gc's report.
 */
export interface ForgetRequest {
  policy: RetentionPolicy;
  host?: string;
  disk?: string;
  dryRun?: boolean;
  prune?: boolean;
}
export interface ForgetResponse {
  plan: ForgetPlan;
  dryRun: boolean;
  removed: number;
  gc?: GcReport;
}

/** POST /v1/gc (global admin) -> 202 { job }; the finished job's result is a GcReport. */
export interface GcResponse {
  report: GcReport;
}

/** POST /v1/verify (global admin) -> 202 { job }; poll GET /v1/jobs/:id until state is not 'running'. */
export interface VerifyRequest {
  readData?: boolean;
}
export interface JobInfo<R = VerifyReport | GcReport | ForgetResponse> {
  id: string;
  kind: 'verify' | 'gc' | 'forget';
  state: 'running' | 'done' | 'failed';
  startedAt: string;
  finishedAt?: string;
  progress?: VerifyProgress;
  /** verify: a VerifyReport; gc: a GcReport; forget: a ForgetResponse. */
  result?: R;
  error?: { code: string; message: string };
}
export interface JobResponse<R = VerifyReport | GcReport | ForgetResponse> {
  job: JobInfo<R>;
}

/**
 * POST /v1/snapshots/:id/lease -> 201, POST /v1/leases/:leaseId (renew) -> 200: the snapshot's chunks are
 * kept until expiresAt, even if the snapshot is forgotten meanwhile. DELETE /v1/leases/:leaseId -> 204.
 */
export interface SnapshotLeaseResponse {
  leaseId: string;
  snapshot: string;
  expiresAt: string;
  /**
   * The fetch stream protocol this server serves the snapshot's chunks over (common/chunk-stream.ts, `GET
   * /v1/chunk-fetch-stream`); absent from servers that only answer one request per chunk.
   */
  chunkFetchStream?: string;
}

/** A share link as the API shows it (POST/GET /v1/shares, DELETE /v1/shares/:id): never its secret or hash. */
export interface ShareInfo {
  id: string;
  snapshot: string;
  host: string;
  disk: string;
  created: string;
  expires: string;
  /** The id of the token that created it. */
  createdBy: string;
}

/** POST /v1/shares. */
export interface CreateShareRequest {
  snapshot: string;
  /** 60 s to 30 days. */
  expiresInSeconds: number;
}

/** POST /v1/shares: the link's path (relative to the server) is shown once, here only. */
export interface CreateShareResponse {
  share: ShareInfo;
  path: string;
}

/** One disk's snapshot series: what monitoring watches (is the newest recent, did it read every sector). */
export interface DiskSeriesStats {
  tenant: string;
  host: string;
  disk: string;
  snapshots: number;
  newest: { id: string; time: string; size: number; unreadableBytes: number };
}

/**
 * GET /v1/stats. A global admin sees the whole repository (scope 'repository', `repository` set); a tenant
 * admin its tenant (`tenant` set); an agent token the snapshots of its hosts.
 */
export interface StatsResponse {
  scope: 'repository' | 'tenant' | 'hosts';
  snapshots: number;
  logicalBytes: number;
  perHost: { host: string; snapshots: number; logicalBytes: number }[];
  /** Every disk in scope with its number of snapshots and its newest one, ordered by tenant, host, disk. */
  disks: DiskSeriesStats[];
  repository?: RepoStats;
  /** A tenant admin's own figures: never dependent on what other tenants hold. */
  tenant?: TenantStats;
}

/**
 * Whether a URL's or a listen address's host is this machine's loopback (127.0.0.0/8, ::1, localhost):
 * traffic to it never leaves the machine, so plain http there exposes no token. Anything else, names
 * included (they are not resolved), counts as the network.
 */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[(.*)\]$/, '$1').toLowerCase();
  if (h === 'localhost' || h.endsWith('.localhost')) return true;
  if (h === '::1' || h === '0:0:0:0:0:0:0:1') return true;
  const v4 = h.startsWith('::ffff:') ? h.slice(7) : h;
  return /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(v4);
}
