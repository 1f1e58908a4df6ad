import { randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import { ConflictError, DiskvaultError, InvalidInputError, NotFoundError } from '../common/errors.js';
import { checkName } from '../common/names.js';
import type { StorageAdapter } from '../storage-adapters/adapter.js';
import type { ChunkEncoding } from './chunk-format.js';
import { ChunkStore, checkChunkId } from './chunk-store.js';
import { loadOrCreateConfig, type RepositoryConfig } from './config.js';
import { collectGarbage, DeletionsInFlight } from './gc.js';
import { IndexDb, IndexUnusable, replaceDbFile, type SessionRow } from './index-db.js';
import { DEFAULT_TENANT, rebuildIndex } from './index-rebuild.js';
import {
  type ChunkerParams,
  ID_BYTES,
  MANIFEST_ENTRY_BYTES,
  type ManifestHeader,
  ManifestReader,
} from './manifest-codec.js';
import { ManifestStore } from './manifest-store.js';
import { planRetention } from './retention.js';
import type {
  ChunkLease,
  DiskSeries,
  ForgetPlan,
  GcReport,
  RepoStats,
  RepositoryApi,
  RetentionPolicy,
  SessionInfo,
  SnapshotFilter,
  SnapshotInfo,
  StoredChunk,
  VerifyProgress,
  VerifyReport,
} from './types.js';
import { verifyRepository } from './verify.js';

export { DEFAULT_TENANT } from './index-rebuild.js';

export interface RepositoryOptions {
  storage: StorageAdapter;
  indexPath: string;
  /** Bytes of recently read chunks kept in memory. Default 256 MiB. */
  cacheBytes?: number;
  /** Unreferenced chunks younger than this are never collected. Default 24 h. */
  gcGraceMs?: number;
  /** A session unused for this long expires. Default 15 min. */
  sessionLeaseMs?: number;
  /** Create the repository when storage holds none. Default true. */
  create?: boolean;
  /** Only used at creation; an existing repository keeps its own. */
  chunker?: ChunkerParams;
  now?: () => number;
  log?: (msg: string) => void;
}

const DEFAULT_CACHE_BYTES = 256 * 1024 * 1024;
const DEFAULT_GRACE_MS = 24 * 3_600_000;
const DEFAULT_LEASE_MS = 15 * 60_000;
/** Commit checks presence in slices of this many entries, so no per-entry objects pile up. */
const PRESENCE_SLICE = 10_000;
const MAX_MISSING_REPORTED = 1000;

class UnavailableError extends DiskvaultError {
  constructor(message: string) {
    super('Unavailable', message);
  }
}

/**
 * The repository: chunks, manifests and refcounts over a StorageAdapter, with the index as its memory.
 * Storage is the truth (reindex rebuilds the index from it); the index answers everything fast.
 *
 * Write ordering protects data: a manifest is stored before its references are counted, and references
 * are dropped before a manifest is deleted, so a crash leaves at worst an uncounted manifest (adopted by
 * reindex) or an unreferenced chunk (collected by gc), never a counted reference to nothing.
 */
export class Repository implements RepositoryApi {
  private readonly chunks: ChunkStore;
  private readonly manifests: ManifestStore;
  private readonly deletions = new DeletionsInFlight();
  private readonly uploads = new Map<string, number>();
  private readonly committing = new Set<string>();
  /** Mutations running now; reindex waits for them before it swaps the index. */
  private activeMutations = 0;
  private idle: (() => void)[] = [];
  private maintenance: string | undefined;
  private gcRunning = false;
  private closed = false;

  private constructor(
    private readonly storage: StorageAdapter,
    private index: IndexDb,
    private readonly config: RepositoryConfig,
    private readonly indexPath: string,
    private readonly opts: {
      cacheBytes: number;
      graceMs: number;
      leaseMs: number;
      now: () => number;
      log: (m: string) => void;
    },
  ) {
    this.chunks = new ChunkStore(storage, config.chunker.max, opts.cacheBytes);
    this.manifests = new ManifestStore(storage);
  }

  static async open(o: RepositoryOptions): Promise<Repository> {
    const log = o.log ?? (() => {});
    const now = o.now ?? Date.now;
    const { config, created } = await loadOrCreateConfig(o.storage, {
      create: o.create ?? true,
      chunker: o.chunker,
    });
    if (created) log(`created repository ${config.id} on ${o.storage.description}`);
    if (!created && o.chunker && JSON.stringify(o.chunker) !== JSON.stringify(config.chunker)) {
      log(
        `chunker parameters given at open are ignored: the repository keeps ${JSON.stringify(config.chunker)}`,
      );
    }
    const settings = {
      cacheBytes: o.cacheBytes ?? DEFAULT_CACHE_BYTES,
      graceMs: o.gcGraceMs ?? DEFAULT_GRACE_MS,
      leaseMs: o.sessionLeaseMs ?? DEFAULT_LEASE_MS,
      now,
      log,
    };
    let index: IndexDb;
    if (created) {
      index = IndexDb.create(o.indexPath, config.id);
    } else {
      try {
        index = IndexDb.openExisting(o.indexPath, config.id);
      } catch (err) {
        if (!(err instanceof IndexUnusable)) throw err;
        log(`index ${o.indexPath} is unusable (${err.message}); rebuilding it from storage`);
        const started = now();
        const tmp = `${o.indexPath}.rebuild-${randomBytes(4).toString('hex')}`;
        const { index: fresh, result } = await rebuildIndex({
          storage: o.storage,
          manifests: new ManifestStore(o.storage),
          chunks: new ChunkStore(o.storage, config.chunker.max, 0),
          path: tmp,
          repositoryId: config.id,
          log,
        });
        fresh.close();
        replaceDbFile(tmp, o.indexPath);
        index = IndexDb.openExisting(o.indexPath, config.id);
        log(
          `index rebuilt: ${result.snapshots} snapshots, ${result.chunks} chunks in ${((now() - started) / 1000).toFixed(1)} s`,
        );
      }
    }
    const repo = new Repository(o.storage, index, config, o.indexPath, settings);
    await repo.adoptUnindexedManifests();
    return repo;
  }

  /**
   * A commit writes its manifest before its index transaction, and a delete lowers refcounts before it
   * removes the manifest: a crash between the two leaves a manifest the index does not know. Storage is the
   * source of truth, so such a manifest is adopted by rebuilding the index from storage (a commit whose
   * client never saw the 201 then also exists; a delete interrupted that way is undone, never half done).
   */
  private async adoptUnindexedManifests(): Promise<void> {
    const unknown: string[] = [];
    for await (const { id } of this.manifests.listIds()) {
      if (!this.index.getSnapshot(id)) unknown.push(id);
    }
    if (unknown.length === 0) return;
    this.opts.log(
      `${unknown.length} manifest(s) in storage are not in the index (interrupted commit or delete: ${unknown.slice(0, 3).join(', ')}); rebuilding the index from storage`,
    );
    await this.reindex();
  }

  get chunker(): ChunkerParams {
    return { ...this.config.chunker };
  }

  get repositoryId(): string {
    return this.config.id;
  }

  // ---- sessions

  async beginSession(host: string, disk: string, tenant: string = DEFAULT_TENANT): Promise<SessionInfo> {
    checkName('host name', host);
    checkName('disk name', disk);
    checkName('tenant name', tenant);
    return this.mutation(() => {
      const now = this.opts.now();
      const row: SessionRow = {
        id: randomBytes(16).toString('hex'),
        tenant,
        host,
        disk,
        started_at: now,
        expires_at: now + this.opts.leaseMs,
      };
      this.index.insertSession(row);
      return this.sessionInfo(row);
    });
  }

  touchSession(sessionId: string): SessionInfo {
    return this.sessionInfo(this.liveSession(sessionId));
  }

  async abort(sessionId: string): Promise<void> {
    this.liveSession(sessionId);
    this.index.deleteSession(sessionId);
  }

  /** The session, its lease renewed; NotFound when unknown or expired (an expired one is removed). */
  private liveSession(sessionId: string): SessionRow {
    const row = typeof sessionId === 'string' ? this.index.getSession(sessionId) : undefined;
    const now = this.opts.now();
    if (!row || row.expires_at <= now) {
      if (row) this.index.deleteSession(row.id);
      throw new NotFoundError(
        `session ${String(sessionId).slice(0, 64)} is unknown or has expired; start a new one`,
        { session: sessionId },
      );
    }
    row.expires_at = now + this.opts.leaseMs;
    this.index.extendSession(row.id, row.expires_at);
    return row;
  }

  private sessionInfo(row: SessionRow): SessionInfo {
    return {
      id: row.id,
      host: row.host,
      disk: row.disk,
      tenant: row.tenant,
      chunker: this.chunker,
      expiresAt: new Date(row.expires_at).toISOString(),
      previous: this.index.newestSnapshot(row.tenant, row.host, row.disk) ?? null,
    };
  }

  // ---- uploads

  async filterMissing(sessionId: string, ids: string[]): Promise<string[]> {
    if (!Array.isArray(ids)) throw new InvalidInputError('ids must be an array');
    return this.mutation(() => {
      const blobs = ids.map((id) => Buffer.from(checkChunkId(id), 'hex'));
      return this.missingOf(sessionId, blobs, ids).map((i) => ids[i]);
    });
  }

  async filterMissingBinary(sessionId: string, ids: Buffer): Promise<Buffer> {
    if (!Buffer.isBuffer(ids) || ids.length % ID_BYTES !== 0)
      throw new InvalidInputError(`binary ids come as whole ${ID_BYTES}-byte records`);
    return this.mutation(() => {
      const blobs: Buffer[] = [];
      for (let at = 0; at < ids.length; at += ID_BYTES) blobs.push(ids.subarray(at, at + ID_BYTES));
      const missing = this.missingOf(
        sessionId,
        blobs,
        blobs.map((b) => b.toString('hex')),
      );
      return Buffer.concat(missing.map((i) => blobs[i]));
    });
  }

  /** Positions of the ids the session's tenant lacks, each id once, in the order asked. */
  private missingOf(sessionId: string, blobs: Buffer[], hex: string[]): number[] {
    const session = this.liveSession(sessionId);
    const present = this.index.presentForTenant(session.tenant, blobs, this.opts.now());
    const seen = new Set<string>();
    const missing: number[] = [];
    hex.forEach((id, i) => {
      if (present.has(id) || seen.has(id)) return;
      seen.add(id);
      missing.push(i);
    });
    return missing;
  }

  chunksReadableBy(tenant: string, ids: string[]): string[] {
    const present = this.index.presentForTenant(
      tenant,
      ids.map((id) => Buffer.from(checkChunkId(id), 'hex')),
    );
    return ids.filter((id) => present.has(id));
  }

  async putChunk(
    sessionId: string,
    id: string,
    payload: Buffer,
    encoding: 'raw' | 'zstd',
  ): Promise<{ stored: boolean }> {
    return this.mutation(async () => {
      const session = this.liveSession(sessionId);
      // The hash is checked before anything else, also for a chunk already stored: ownership is granted
      // only to a tenant that proved it holds the bytes.
      const rawLength = this.chunks.verifyUpload(id, payload, encoding as ChunkEncoding);
      for (;;) {
        await this.deletions.settled(id);
        if (this.deletions.has(id)) continue;
        const row = this.index.getChunk(id);
        if (row && row.stored_size > 0) {
          this.index.claimChunk(id, session.tenant, this.opts.now());
          return { stored: false };
        }
        break;
      }
      // From here to the index row, gc's orphan sweep must leave this object alone: it is marked uploading
      // synchronously with the checks above, before the first await.
      const prepared = this.chunks.prepare(id, rawLength, payload, encoding as ChunkEncoding);
      this.uploads.set(id, (this.uploads.get(id) ?? 0) + 1);
      try {
        const storedSize = prepared.bytes.length;
        await this.chunks.write(prepared);
        this.index.recordStoredChunk(id, prepared.rawLength, storedSize, session.tenant, this.opts.now());
      } finally {
        const n = (this.uploads.get(id) ?? 1) - 1;
        if (n > 0) this.uploads.set(id, n);
        else this.uploads.delete(id);
      }
      return { stored: true };
    });
  }

  // ---- commit

  async commit(sessionId: string, body: AsyncIterable<Buffer | Uint8Array | string>): Promise<SnapshotInfo> {
    return this.mutation(async () => {
      const session = this.liveSession(sessionId);
      if (this.committing.has(sessionId))
        throw new ConflictError(`session ${sessionId} is already committing`);
      this.committing.add(sessionId);
      try {
        return await this.commitLocked(session, body);
      } finally {
        this.committing.delete(sessionId);
      }
    });
  }

  private async commitLocked(
    session: SessionRow,
    body: AsyncIterable<Buffer | Uint8Array | string>,
  ): Promise<SnapshotInfo> {
    const reader = await ManifestReader.open(body, 'wire');
    const h = reader.header;
    if (h.host !== session.host || h.disk !== session.disk) {
      throw new InvalidInputError(
        `manifest is for ${h.host}/${h.disk}, the session for ${session.host}/${session.disk}`,
      );
    }
    const c = this.config.chunker;
    if (h.chunker.min !== c.min || h.chunker.avg !== c.avg || h.chunker.max !== c.max) {
      throw new InvalidInputError(
        `manifest chunker parameters ${JSON.stringify(h.chunker)} differ from the repository's ${JSON.stringify(c)}`,
      );
    }
    // The entries are held in memory (36 bytes a chunk: 72 MB for a 2 TiB disk at 1 MiB chunks) because
    // the reference counting must happen in one synchronous transaction after the manifest is stored.
    const batches: Buffer[] = [];
    for await (const b of reader.entryBatches()) batches.push(b);
    const entries = batches.length === 1 ? (batches[0] as Buffer) : Buffer.concat(batches);

    // Not owned by the tenant counts as missing: another tenant's chunk must be uploaded (proving the
    // bytes are held) before it can be referenced, so commit is no oracle for other tenants' data.
    const missing = this.missingForTenant(session.tenant, entries);
    if (missing.length > 0) throw missingConflict(missing);

    const header: ManifestHeader & { id: string; tenant: string } = {
      ...h,
      id: randomBytes(32).toString('hex'),
      tenant: session.tenant,
    };
    await this.manifests.write(header, entries);
    let stillMissing: string[];
    try {
      stillMissing = this.index.commitSnapshot(header, entries, session.id);
    } catch (err) {
      await this.manifests.delete(header.id);
      throw err;
    }
    if (stillMissing.length > 0) {
      // gc removed a chunk between the first check and the transaction: no dangling manifest is left.
      await this.manifests.delete(header.id);
      throw missingConflict(stillMissing);
    }
    const info = this.index.getSnapshot(header.id);
    if (!info) throw new Error(`snapshot ${header.id} vanished right after its commit`);
    this.opts.log(
      `snapshot ${info.id} committed: ${info.host}/${info.disk}, ${info.chunkCount} chunks, tenant ${info.tenant}`,
    );
    return info;
  }

  private missingForTenant(tenant: string, entries: Buffer): string[] {
    const missing = new Set<string>();
    for (
      let from = 0;
      from < entries.length && missing.size < MAX_MISSING_REPORTED;
      from += PRESENCE_SLICE * MANIFEST_ENTRY_BYTES
    ) {
      const slice = entries.subarray(
        from,
        Math.min(entries.length, from + PRESENCE_SLICE * MANIFEST_ENTRY_BYTES),
      );
      const ids: Buffer[] = [];
      for (let at = 0; at < slice.length; at += MANIFEST_ENTRY_BYTES) ids.push(slice.subarray(at, at + 32));
      const present = this.index.presentForTenant(tenant, ids);
      for (const id of ids) {
        const hex = id.toString('hex');
        if (!present.has(hex)) missing.add(hex);
        if (missing.size >= MAX_MISSING_REPORTED) break;
      }
    }
    return [...missing];
  }

  // ---- reading

  listSnapshots(filter?: SnapshotFilter): SnapshotInfo[] {
    return this.index.listSnapshots(filter);
  }

  diskSeries(filter?: SnapshotFilter): DiskSeries[] {
    return this.index.diskSeries(filter);
  }

  getSnapshot(id: string): SnapshotInfo | undefined {
    return typeof id === 'string' ? this.index.getSnapshot(id) : undefined;
  }

  async openManifest(id: string): Promise<Readable> {
    this.requireSnapshot(id);
    return this.manifests.open(id);
  }

  async getManifestHeader(id: string): Promise<ManifestHeader> {
    this.requireSnapshot(id);
    return this.manifests.header(id);
  }

  async readChunk(id: string): Promise<Buffer> {
    return this.chunks.readRaw(id);
  }

  async readStoredChunk(id: string): Promise<StoredChunk> {
    return this.chunks.readStored(id);
  }

  async readStoredChunkUnverified(id: string): Promise<StoredChunk> {
    return this.chunks.readStoredUnverified(id);
  }

  async leaseStoredChunkUnverified(id: string): Promise<ChunkLease> {
    return this.chunks.leaseStoredUnverified(id);
  }

  readBuffers(): { held: number; reused: number } {
    return { held: this.chunks.heldReadBuffers, reused: this.chunks.reusedReadBuffers };
  }

  private requireSnapshot(id: string): SnapshotInfo {
    const s = this.getSnapshot(id);
    if (!s) throw new NotFoundError(`no snapshot ${String(id).slice(0, 64)}`, { snapshot: id });
    return s;
  }

  // ---- deleting

  async deleteSnapshot(id: string): Promise<void> {
    await this.mutation(async () => {
      this.requireSnapshot(id);
      // Read whole before lowering anything: a manifest that fails half way must not lower half its counts.
      const batches: Buffer[] = [];
      for await (const b of this.manifests.entryBatches(id)) batches.push(b);
      const removed = this.index.removeSnapshot(id, Buffer.concat(batches), this.opts.log, this.opts.now());
      if (!removed) throw new NotFoundError(`no snapshot ${id}`, { snapshot: id });
      // After the counts: a crash here leaves a manifest without a row, which reindex would adopt again
      // (keeping data), never a row whose manifest is gone.
      await this.manifests.delete(id);
      this.opts.log(`snapshot ${id} deleted`);
    });
  }

  planForget(policy: RetentionPolicy, filter?: SnapshotFilter): ForgetPlan {
    return planRetention(this.index.listSnapshots(filter), policy);
  }

  async applyForget(plan: ForgetPlan): Promise<{ removed: number }> {
    let removed = 0;
    for (const group of plan.groups) {
      for (const snap of group.remove) {
        if (!this.index.getSnapshot(snap.id)) continue; // already gone: forget is idempotent
        try {
          await this.deleteSnapshot(snap.id);
          removed++;
        } catch (err) {
          if (!(err instanceof NotFoundError)) throw err;
        }
      }
    }
    return { removed };
  }

  async gc(): Promise<GcReport> {
    if (this.gcRunning) throw new ConflictError('gc is already running');
    this.gcRunning = true;
    try {
      return await this.mutation(() =>
        collectGarbage({
          index: this.index,
          chunks: this.chunks,
          storage: this.storage,
          deletions: this.deletions,
          uploading: (id) => this.uploads.has(id),
          now: this.opts.now,
          graceMs: this.opts.graceMs,
          log: this.opts.log,
        }),
      );
    } finally {
      this.gcRunning = false;
    }
  }

  // ---- checking

  async verify(opts: { readData: boolean; onProgress?: (p: VerifyProgress) => void }): Promise<VerifyReport> {
    return verifyRepository(
      {
        index: this.index,
        chunks: this.chunks,
        manifests: this.manifests,
        storage: this.storage,
        now: this.opts.now,
      },
      opts,
    );
  }

  stats(): RepoStats {
    const t = this.index.totals();
    const s = this.index.snapshotTotals();
    const unique = this.index.uniqueBytesPerTenant();
    const tenants = [...new Set([...s.perTenant.keys(), ...unique.keys()])].sort();
    return {
      snapshots: s.snapshots,
      logicalBytes: s.logicalBytes,
      uniqueChunks: t.uniqueChunks,
      rawBytes: t.rawBytes,
      storedBytes: t.storedBytes,
      dedupRatio: t.rawBytes > 0 ? s.logicalBytes / t.rawBytes : 0,
      compressionRatio: t.storedBytes > 0 ? t.rawBytes / t.storedBytes : 0,
      perHost: s.perHost,
      perTenant: tenants.map((tenant) => ({
        tenant,
        snapshots: s.perTenant.get(tenant)?.snapshots ?? 0,
        logicalBytes: s.perTenant.get(tenant)?.logicalBytes ?? 0,
        uniqueBytes: unique.get(tenant) ?? 0,
      })),
    };
  }

  /**
   * Rebuilds the index from storage and swaps it in. Open sessions, tenant ownership of chunks still
   * stored, and touch times carry over from the old index (storage does not hold them). Mutations are
   * refused (Unavailable) while it runs; reads keep using the old index until the swap.
   */
  async reindex(): Promise<{ snapshots: number; chunks: number; seconds: number }> {
    if (this.maintenance) throw new UnavailableError(`repository is busy: ${this.maintenance}`);
    this.maintenance = 'reindex in progress';
    try {
      await this.drained();
      const started = this.opts.now();
      const tmp = `${this.indexPath}.rebuild-${randomBytes(4).toString('hex')}`;
      const { index: fresh, result } = await rebuildIndex({
        storage: this.storage,
        manifests: this.manifests,
        chunks: this.chunks,
        path: tmp,
        repositoryId: this.config.id,
        log: this.opts.log,
      });
      try {
        carryOver(fresh, this.index.path);
      } finally {
        fresh.close();
      }
      this.index.close();
      replaceDbFile(tmp, this.indexPath);
      this.index = IndexDb.openExisting(this.indexPath, this.config.id);
      const seconds = (this.opts.now() - started) / 1000;
      this.opts.log(
        `reindex: ${result.snapshots} snapshots, ${result.chunks} chunks in ${seconds.toFixed(1)} s`,
      );
      return { snapshots: result.snapshots, chunks: result.chunks, seconds };
    } finally {
      this.maintenance = undefined;
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.maintenance = 'repository is closed';
    await this.drained();
    this.index.close();
  }

  // ---- plumbing

  private async mutation<T>(fn: () => T | Promise<T>): Promise<T> {
    if (this.maintenance)
      throw new UnavailableError(`repository is busy: ${this.maintenance}; try again shortly`);
    this.activeMutations++;
    try {
      return await fn();
    } finally {
      if (--this.activeMutations === 0) for (const wake of this.idle.splice(0)) wake();
    }
  }

  private drained(): Promise<void> {
    if (this.activeMutations === 0) return Promise.resolve();
    return new Promise((resolve) => this.idle.push(resolve));
  }
}

function missingConflict(missing: string[]): ConflictError {
  return new ConflictError(
    `${missing.length}${missing.length >= MAX_MISSING_REPORTED ? '+' : ''} chunks are missing; upload them and commit again`,
    {
      missing: missing.slice(0, MAX_MISSING_REPORTED),
    },
  );
}

/** What storage cannot tell a rebuilt index: open sessions, ownership of uncommitted uploads, touch times. */
function carryOver(fresh: IndexDb, oldPath: string): void {
  const db = fresh.db;
  db.prepare('ATTACH DATABASE ? AS old').run(oldPath);
  try {
    fresh.transaction(() => {
      db.exec(
        'INSERT OR IGNORE INTO sessions SELECT id, tenant, host, disk, started_at, expires_at FROM old.sessions',
      );
      db.exec(
        'INSERT OR IGNORE INTO owners (chunk, tenant) SELECT o.chunk, o.tenant FROM old.owners o WHERE EXISTS (SELECT 1 FROM chunks c WHERE c.id = o.chunk AND c.stored_size > 0)',
      );
      db.exec(
        'UPDATE chunks SET touched_at = MAX(touched_at, COALESCE((SELECT t.touched_at FROM old.chunks t WHERE t.id = chunks.id), 0))',
      );
    });
  } finally {
    db.exec('DETACH DATABASE old');
  }
}
