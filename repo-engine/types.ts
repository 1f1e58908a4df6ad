import type { Readable } from 'node:stream';
import type { ChunkerParams, ManifestE2e, ManifestHeader } from './manifest-codec.js';

export interface SnapshotInfo {
  id: string;
  host: string;
  disk: string;
  /**
   * ISO 8601 UTC: the time the snapshot represents (the agent's --time, or its start), never later than
   * `receivedAt` (repo-engine/snapshot-time.ts). Retention, "newest" and the freshness gauges use it.
   */
  time: string;
  /** ISO 8601 UTC: when the server received the commit, by its own clock (kept in the stored manifest). */
  receivedAt: string;
  size: number;
  sha256: string;
  chunkCount: number;
  tags: string[];
  unreadable: [number, number][];
  sourceFormat: string;
  /** The dedup domain the snapshot's host belongs to ('default' on a single-organisation server). */
  tenant: string;
  /** Forget, delete and gc never remove a protected snapshot. The server always sets it. */
  protected?: boolean;
  /**
   * Set when the snapshot was made with an end-to-end key: its chunks are sealed by the agent, `sha256` is
   * empty and the secrets (the image's SHA-256) are in `e2e.sealed`, which only the key opens.
   */
  e2e?: ManifestE2e;
}

/** One disk of one host (in one tenant): the series its nightly snapshots form. */
export interface DiskSeries {
  tenant: string;
  host: string;
  disk: string;
  /** Snapshots in the series. */
  snapshots: number;
  /** The one with the latest time. */
  newest: SnapshotInfo;
}

export interface SnapshotFilter {
  host?: string;
  /** When set, only snapshots of these hosts (agent tokens' scope). */
  hosts?: string[];
  disk?: string;
  tenant?: string;
}

export interface SessionInfo {
  id: string;
  host: string;
  disk: string;
  tenant: string;
  chunker: ChunkerParams;
  /** ISO 8601: the lease ends here unless the session is used again. */
  expiresAt: string;
  /**
   * The newest snapshot of the same host and disk (made with the same end-to-end key, or plaintext for a
   * plaintext session), so the agent can seed its known-set from it.
   */
  previous: SnapshotInfo | null;
  /** The end-to-end key id of a session opened with one. */
  keyId?: string;
}

export interface RetentionPolicy {
  last?: number;
  hourly?: number;
  daily?: number;
  weekly?: number;
  monthly?: number;
  yearly?: number;
  /** Durations in restic's form: "1y2m3d4h" (y, m, d, h). */
  within?: string;
  withinHourly?: string;
  withinDaily?: string;
  withinWeekly?: string;
  withinMonthly?: string;
  withinYearly?: string;
  tags?: string[];
}

export interface ForgetGroupPlan {
  host: string;
  disk: string;
  keep: { snapshot: SnapshotInfo; reasons: string[] }[];
  remove: SnapshotInfo[];
}

export interface ForgetPlan {
  groups: ForgetGroupPlan[];
}

export interface GcReport {
  chunksDeleted: number;
  bytesFreed: number;
  orphansDeleted: number;
  /** Chunks with refcount 0 left after this run: within the grace period, or held (`chunksHeld`). */
  chunksProtected: number;
  /** Of those, the chunks kept because an open session or a snapshot lease may still need them. */
  chunksHeld: number;
  openSessions: number;
  openLeases: number;
  /** Each session or lease that kept at least one chunk (a chunk kept by two counts for both). */
  holders: GcHolder[];
  seconds: number;
}

/** What held gc back: an upload session (its touched chunks) or a snapshot lease (a forgotten snapshot). */
export interface GcHolder {
  kind: 'session' | 'lease';
  /** The first 8 characters of the session or lease id. */
  id: string;
  tenant: string;
  host: string;
  disk: string;
  /** For a lease: the snapshot it holds. */
  snapshot?: string;
  expiresAt: string;
  chunks: number;
}

/** A hold on one snapshot's chunks for a reader (restore, NBD export); see docs/api.md, "Snapshot leases". */
export interface SnapshotLeaseInfo {
  id: string;
  snapshot: string;
  tenant: string;
  host: string;
  disk: string;
  /** Who took it (opaque to the engine: the API's token id). */
  owner: string;
  /** ISO 8601: the lease ends here unless renewed. */
  expiresAt: string;
}

export interface VerifyProblem {
  chunk: string;
  kind: 'missing' | 'corrupt';
  /** Every snapshot that names the chunk. */
  snapshots: string[];
  detail: string;
}

/** A chunk whose stored copy was found damaged before and is good now (replaced by an upload, or read good). */
export interface HealedChunk {
  chunk: string;
  /** Every snapshot that names the chunk. */
  snapshots: string[];
  /** What was wrong with the copy. */
  detail: string;
  /** ISO 8601: when a read found the copy damaged. */
  foundAt: string;
  /** ISO 8601: when an upload replaced it; null when this verify read the stored copy good again. */
  healedAt: string | null;
}

export interface VerifyReport {
  ok: boolean;
  snapshotsChecked: number;
  chunksChecked: number;
  bytesRead: number;
  problems: VerifyProblem[];
  /** Manifests that could not be read, or that give a chunk a length other than its real one. */
  badManifests: { snapshot: string; detail: string }[];
  /** Index rows whose refcount differs from a recount of the manifests. */
  refcountMismatches: number;
  /** Chunks found damaged since the last verify that are good now; each is reported by one verify. */
  healed: HealedChunk[];
  /** Snapshots that named a healed chunk and have no problem left in this report: restorable again. */
  healedSnapshots: string[];
  seconds: number;
}

export interface VerifyProgress {
  phase: string;
  done: number;
  total: number;
}

/**
 * One tenant's figures, computed from its own snapshots and chunks alone: what other tenants store never
 * changes them (a figure that did would tell a tenant what others hold).
 */
export interface TenantStats {
  tenant: string;
  snapshots: number;
  logicalBytes: number;
  /** Distinct chunks the tenant holds (uploaded, or named by its snapshots). */
  chunks: number;
  /** Their raw bytes, each chunk once: the tenant's deduplicated data. */
  rawBytes: number;
}

export interface RepoStats {
  snapshots: number;
  logicalBytes: number;
  uniqueChunks: number;
  rawBytes: number;
  storedBytes: number;
  dedupRatio: number;
  compressionRatio: number;
  perHost: { host: string; snapshots: number; logicalBytes: number }[];
  /**
   * Per tenant, for global admins: its own figures, and `uniqueBytes`, the stored bytes of chunks no other
   * tenant holds (about what deleting the tenant would free), which depends on the other tenants.
   */
  perTenant: (TenantStats & { uniqueBytes: number })[];
}

/** How a chunk is handed out: its stored payload as is, so the server never recompresses. */
export interface StoredChunk {
  /** 'sealed': an end-to-end sealed chunk (sealed-chunk.ts), to be handed out as is. */
  encoding: 'raw' | 'zstd' | 'sealed';
  rawLength: number;
  payload: Buffer;
}

/** A stored chunk lent for sending: `release` it once nothing reads `payload` any more. */
export interface ChunkLease extends StoredChunk {
  /**
   * Idempotent. `reusable` false when something may still read the payload (a send cut off may still sit
   * in a socket's queue): its memory is then never reused.
   */
  release(reusable: boolean): void;
}

export interface CommitOptions {
  /**
   * The committer may give a time earlier than its session's start (an admin importing old images).
   * Default true: the engine trusts an in-process caller; the API server sets it from the token's role.
   */
  mayBackdate?: boolean;
  /** 64 hex: the snapshot's id, instead of a new random one. */
  id?: string;
}

/** An upload session's end-to-end key: its uploads are sealed chunks of this key id (32 hex). */
export interface SessionKey {
  keyId: string;
}

/**
 * The engine's public surface, as the API server and the tests use it. `Repository` (repository.ts)
 * implements it; `api/` codes against this interface only.
 */
export interface RepositoryApi {
  readonly chunker: ChunkerParams;
  readonly repositoryId: string;
  /** The clock sessions, leases and snapshots are dated by (milliseconds; tests give the repository one). */
  now(): number;
  /** `key`: an end-to-end session, whose uploads are sealed chunks of that key (the caller proved it). */
  beginSession(host: string, disk: string, tenant?: string, key?: SessionKey): Promise<SessionInfo>;
  /** Renews the lease; throws NotFound for an unknown or expired session. */
  touchSession(sessionId: string): SessionInfo;
  /** Ids (64 hex) this session must upload: the rest are known to the session's tenant. */
  filterMissing(sessionId: string, ids: string[]): Promise<string[]>;
  /** filterMissing with ids as consecutive 32-byte binary records in and out: no hex either way. */
  filterMissingBinary(sessionId: string, ids: Buffer): Promise<Buffer>;
  /**
   * Verifies SHA-256(raw) === id (HashMismatch otherwise) and stores it unless a good copy is stored.
   * `payload` is raw or zstd; a zstd payload is decompressed (bounded by chunker.max) to check the hash,
   * and stored as sent only when it is one frame declaring the raw length (otherwise re-encoded).
   * `stored`: the session's tenant did not hold a good copy before (it does now); it never depends on
   * other tenants' data. `written`: a new copy went to storage (for metrics only: it does).
   */
  putChunk(
    sessionId: string,
    id: string,
    payload: Buffer,
    encoding: 'raw' | 'zstd' | 'sealed',
  ): Promise<{ stored: boolean; written: boolean }>;
  /**
   * Reads the whole binary manifest from `body`, checks every chunk is present and the snapshot's time is
   * plausible (snapshot-time.ts), stores it with the server's receipt time, counts refs.
   * `opts.id` keeps an id another repository gave the snapshot (a copy): Conflict when it is already taken.
   */
  commit(
    sessionId: string,
    body: AsyncIterable<Buffer | Uint8Array | string>,
    opts?: CommitOptions,
  ): Promise<SnapshotInfo>;
  abort(sessionId: string): Promise<void>;
  /**
   * Holds snapshot `snapshotId`'s chunks until the lease ends (renewed or not), even if the snapshot is
   * forgotten meanwhile. `owner` is opaque (the API's token id), for `countLeases`. NotFound without it.
   */
  takeLease(snapshotId: string, owner: string): Promise<SnapshotLeaseInfo>;
  /** Extends the lease; NotFound when unknown or ended. */
  renewLease(leaseId: string): SnapshotLeaseInfo;
  /** Ends the lease; NotFound when unknown or ended. */
  releaseLease(leaseId: string): Promise<void>;
  getLease(leaseId: string): SnapshotLeaseInfo | undefined;
  /** Live leases taken by `owner`. */
  countLeases(owner: string): number;

  listSnapshots(filter?: SnapshotFilter): SnapshotInfo[];
  /** Each disk with snapshots: how many, and the newest (for freshness monitoring). */
  diskSeries(filter?: SnapshotFilter): DiskSeries[];
  getSnapshot(id: string): SnapshotInfo | undefined;
  /** The stored binary manifest, streamed. */
  openManifest(id: string): Promise<Readable>;
  getManifestHeader(id: string): Promise<ManifestHeader>;
  /** Hash-checked raw bytes; CorruptError when the stored object does not match its id. */
  readChunk(id: string): Promise<Buffer>;
  /** The stored payload, hash-checked, for serving without recompression. */
  readStoredChunk(id: string): Promise<StoredChunk>;
  /**
   * The stored payload after structural checks only (header, lengths, a zstd frame's declared size): not
   * decompressed, not hashed. Only for a reader that checks SHA-256(raw) === id itself before using the
   * bytes; CorruptError when the structure is wrong.
   */
  readStoredChunkUnverified(id: string): Promise<StoredChunk>;
  /** readStoredChunkUnverified for a sender: the payload's memory is reused once the lease is released. */
  leaseStoredChunkUnverified(id: string): Promise<ChunkLease>;
  /** The chunk read buffers: held now (by the cache or by leases), and reused instead of allocated. */
  readBuffers(): { held: number; reused: number };
  /** Conflict (details.reason 'protected') for a protected snapshot. */
  deleteSnapshot(id: string): Promise<void>;
  /** Protects a snapshot (or lifts the protection); the snapshot as it is afterwards. */
  setProtected(id: string, protect: boolean): Promise<SnapshotInfo>;
  /**
   * Of `ids`, those `tenant` may read: chunks it uploaded or its snapshots name, so the server can
   * answer GET /v1/chunks/:id for another tenant's chunk exactly as for an absent one. Read-only: no touch.
   */
  chunksReadableBy(tenant: string, ids: string[]): string[];
  /**
   * A reader found chunk `id` wrong (`detail`): the server's verdict after checking the stored copy, and
   * for a sealed chunk the word of its owner (`tenant`; undefined for a global admin) unless `takeWord` is
   * false (a reporter who holds no key, such as a global reader). See the Repository.
   */
  reportDamage(
    tenant: string | undefined,
    id: string,
    detail: string,
    takeWord?: boolean,
  ): Promise<'damaged' | 'good' | 'absent'>;

  planForget(policy: RetentionPolicy, filter?: SnapshotFilter): ForgetPlan;
  applyForget(
    plan: ForgetPlan,
    opts?: { onProgress?: (p: VerifyProgress) => void },
  ): Promise<{ removed: number }>;
  gc(opts?: { onProgress?: (p: VerifyProgress) => void }): Promise<GcReport>;
  verify(opts: { readData: boolean; onProgress?: (p: VerifyProgress) => void }): Promise<VerifyReport>;
  stats(): RepoStats;
  /** One tenant's figures, independent of other tenants' data (for tenant admins). */
  tenantStats(tenant: string): TenantStats;
  reindex(): Promise<{ snapshots: number; chunks: number; seconds: number }>;
  close(): Promise<void>;
}
