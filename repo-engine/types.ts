import type { Readable } from 'node:stream';
import type { ChunkerParams, ManifestHeader } from './manifest-codec.js';

export interface SnapshotInfo {
  id: string;
  host: string;
  disk: string;
  /** ISO 8601 UTC: the time the snapshot represents (the agent's --time, or its start). */
  time: string;
  size: number;
  sha256: string;
  chunkCount: number;
  tags: string[];
  unreadable: [number, number][];
  sourceFormat: string;
  /** The dedup domain the snapshot's host belongs to ('default' on a single-organisation server). */
  tenant: string;
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
  /** The newest snapshot of the same host and disk, so the agent can seed its known-set from it. */
  previous: SnapshotInfo | null;
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
  /** Chunks with refcount 0 kept because a session may still reference them. */
  chunksProtected: number;
  seconds: number;
}

export interface VerifyProblem {
  chunk: string;
  kind: 'missing' | 'corrupt';
  /** Every snapshot that names the chunk. */
  snapshots: string[];
  detail: string;
}

export interface VerifyReport {
  ok: boolean;
  snapshotsChecked: number;
  chunksChecked: number;
  bytesRead: number;
  problems: VerifyProblem[];
  /** Manifests that could not be read at all. */
  badManifests: { snapshot: string; detail: string }[];
  /** Index rows whose refcount differs from a recount of the manifests. */
  refcountMismatches: number;
  seconds: number;
}

export interface VerifyProgress {
  phase: string;
  done: number;
  total: number;
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
  perTenant: { tenant: string; snapshots: number; logicalBytes: number; uniqueBytes: number }[];
}

/** How a chunk is handed out: its stored payload as is, so the server never recompresses. */
export interface StoredChunk {
  encoding: 'raw' | 'zstd';
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

/**
 * The engine's public surface, as the API server and the tests use it. `Repository` (repository.ts)
 * implements it; `api/` codes against this interface only.
 */
export interface RepositoryApi {
  readonly chunker: ChunkerParams;
  readonly repositoryId: string;
  beginSession(host: string, disk: string, tenant?: string): Promise<SessionInfo>;
  /** Renews the lease; throws NotFound for an unknown or expired session. */
  touchSession(sessionId: string): SessionInfo;
  /** Ids (64 hex) this session must upload: the rest are known to the session's tenant. */
  filterMissing(sessionId: string, ids: string[]): Promise<string[]>;
  /** filterMissing with ids as consecutive 32-byte binary records in and out: no hex either way. */
  filterMissingBinary(sessionId: string, ids: Buffer): Promise<Buffer>;
  /**
   * Verifies SHA-256(raw) === id (HashMismatch otherwise) and stores it unless present. `payload` is raw or
   * zstd; a zstd payload is decompressed (bounded by chunker.max) to check the hash and stored as sent.
   */
  putChunk(
    sessionId: string,
    id: string,
    payload: Buffer,
    encoding: 'raw' | 'zstd',
  ): Promise<{ stored: boolean }>;
  /** Reads the whole binary manifest from `body`, checks every chunk is present, stores it, counts refs. */
  commit(sessionId: string, body: AsyncIterable<Buffer | Uint8Array | string>): Promise<SnapshotInfo>;
  abort(sessionId: string): Promise<void>;

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
  deleteSnapshot(id: string): Promise<void>;
  /**
   * Of `ids`, those `tenant` may read: chunks it uploaded or its snapshots name, so the server can
   * answer GET /v1/chunks/:id for another tenant's chunk exactly as for an absent one. Read-only: no touch.
   */
  chunksReadableBy(tenant: string, ids: string[]): string[];

  planForget(policy: RetentionPolicy, filter?: SnapshotFilter): ForgetPlan;
  applyForget(plan: ForgetPlan): Promise<{ removed: number }>;
  gc(): Promise<GcReport>;
  verify(opts: { readData: boolean; onProgress?: (p: VerifyProgress) => void }): Promise<VerifyReport>;
  stats(): RepoStats;
  reindex(): Promise<{ snapshots: number; chunks: number; seconds: number }>;
  close(): Promise<void>;
}
