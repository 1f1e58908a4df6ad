import { randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import {
  ConflictError,
  DiskvaultError,
  InvalidInputError,
  isDiskvaultError,
  NotFoundError,
} from '../common/errors.js';
import { checkName } from '../common/names.js';
import type { StorageAdapter } from '../storage-adapters/adapter.js';
import type { ChunkEncoding } from './chunk-format.js';
import { ChunkStore, checkChunkId } from './chunk-store.js';
import { type EncryptionChoice, loadOrCreateConfig, type RepositoryConfig } from './config.js';
import { collectGarbage, DeletionsInFlight } from './gc.js';
import {
  IndexDb,
  IndexUnusable,
  type LeaseRow,
  type ReferenceStaging,
  replaceDbFile,
  type SessionRow,
  type StoredHeader,
} from './index-db.js';
import { DEFAULT_TENANT, rebuildIndex } from './index-rebuild.js';
import { checkUnreadableRanges, describeMismatch, entryLengthMismatches } from './manifest-checks.js';
import {
  type ChunkerParams,
  HEX64,
  ID_BYTES,
  MANIFEST_ENTRY_BYTES,
  type ManifestHeader,
  ManifestReader,
} from './manifest-codec.js';
import { ManifestStore } from './manifest-store.js';
import { isProtectedRefusal, ProtectionStore, SnapshotProtectedError } from './protection.js';
import type { RepositoryKeyStore } from './repository-key.js';
import { planRetention } from './retention.js';
import { checkCommitTime, DEFAULT_CLOCK_SKEW_MS } from './snapshot-time.js';
import { type ObjectCodec, objectCodec } from './stored-objects.js';
import { TouchedSet } from './touched-set.js';
import type {
  ChunkLease,
  CommitOptions,
  DiskSeries,
  ForgetPlan,
  GcReport,
  RepoStats,
  RepositoryApi,
  RetentionPolicy,
  SessionInfo,
  SessionKey,
  SnapshotFilter,
  SnapshotInfo,
  SnapshotLeaseInfo,
  StoredChunk,
  TenantStats,
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
  /** A session unused for this long expires, and so does a snapshot lease not renewed. Default 15 min. */
  sessionLeaseMs?: number;
  /** A session expires this long after it began, however busy. Default 24 h. */
  sessionMaxAgeMs?: number;
  /** Create the repository when storage holds none. Default true. */
  create?: boolean;
  /** Only used at creation; an existing repository keeps its own. */
  chunker?: ChunkerParams;
  /** Holds the key of an encrypted repository (and receives a new one at creation). */
  keyStore?: RepositoryKeyStore;
  /** At creation: 'aes-256-gcm' (the default when a keyStore is given) or 'none' (format 1, plaintext). */
  encryption?: EncryptionChoice;
  now?: () => number;
  log?: (msg: string) => void;
  /** How far a snapshot's time may lie ahead of the server's clock (or before its session). Default 5 min. */
  clockSkewMs?: number;
}

const DEFAULT_CACHE_BYTES = 256 * 1024 * 1024;
const DEFAULT_GRACE_MS = 24 * 3_600_000;
const DEFAULT_LEASE_MS = 15 * 60_000;
const DEFAULT_SESSION_MAX_AGE_MS = 24 * 3_600_000;
/**
 * A commit checks, stores and counts its manifest in pieces of this many entries, and a delete lowers its
 * counts in pieces of this many chunks, the event loop getting a turn between them: a piece costs a few
 * milliseconds of index work, so other requests wait at most that.
 */
const REFERENCE_SLICE = 1024;
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
  private readonly protection: ProtectionStore;
  private readonly deletions = new DeletionsInFlight();
  private readonly uploads = new Map<string, number>();
  /**
   * Snapshots being deleted, and those whose delete stopped after their row was removed (lowering their
   * counts or deleting their manifest failed): until the next open adopts such a manifest again (it brings
   * the snapshot back with exact counts), gc keeps every chunk it names.
   */
  private readonly deletesPending = new Set<string>();
  private readonly committing = new Set<string>();
  /** What each open session was told is present or uploaded: what gc keeps for it. */
  private readonly touched = new Map<string, TouchedSet>();
  /** The end-to-end key id of each session opened with one (sessions do not outlive the API's bindings). */
  private readonly sessionKeys = new Map<string, string>();
  /** Snapshot ids a commit with a given id holds from its check to its index row. */
  private readonly claimedIds = new Set<string>();
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
    private readonly codec: ObjectCodec,
    private readonly opts: {
      cacheBytes: number;
      graceMs: number;
      leaseMs: number;
      clockSkewMs: number;
      maxAgeMs: number;
      now: () => number;
      log: (m: string) => void;
    },
  ) {
    this.chunks = new ChunkStore(storage, config.chunker.max, opts.cacheBytes, codec);
    this.manifests = new ManifestStore(storage, codec);
    this.protection = new ProtectionStore(storage);
  }

  static async open(o: RepositoryOptions): Promise<Repository> {
    const log = o.log ?? (() => {});
    const now = o.now ?? Date.now;
    const { config, created, keys } = await loadOrCreateConfig(o.storage, {
      create: o.create ?? true,
      chunker: o.chunker,
      ...(o.encryption ? { encryption: o.encryption } : {}),
      ...(o.keyStore ? { keyStore: o.keyStore } : {}),
    });
    const codec = objectCodec(keys, config.chunkFanout);
    if (created)
      log(
        `created ${keys ? 'encrypted' : 'plaintext'} repository ${config.id} on ${o.storage.description}${keys && o.keyStore ? `; its key is in ${o.keyStore.location}: keep a copy, the data cannot be read without it` : ''}`,
      );
    else if (!keys)
      log(
        `repository ${config.id} is not encrypted (format 1); docs/repository-format.md says how to move to an encrypted one`,
      );
    if (!created && o.chunker && JSON.stringify(o.chunker) !== JSON.stringify(config.chunker)) {
      log(
        `chunker parameters given at open are ignored: the repository keeps ${JSON.stringify(config.chunker)}`,
      );
    }
    const settings = {
      cacheBytes: o.cacheBytes ?? DEFAULT_CACHE_BYTES,
      graceMs: o.gcGraceMs ?? DEFAULT_GRACE_MS,
      leaseMs: o.sessionLeaseMs ?? DEFAULT_LEASE_MS,
      clockSkewMs: o.clockSkewMs ?? DEFAULT_CLOCK_SKEW_MS,
      maxAgeMs: o.sessionMaxAgeMs ?? DEFAULT_SESSION_MAX_AGE_MS,
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
          manifests: new ManifestStore(o.storage, codec),
          chunks: new ChunkStore(o.storage, config.chunker.max, 0, codec),
          path: tmp,
          repositoryId: config.id,
          log,
        });
        fresh.close();
        replaceDbFile(tmp, o.indexPath);
        index = IndexDb.openExisting(o.indexPath, config.id);
        // Snapshot leases lived only in the lost index: a restore running now may read a snapshot forgotten
        // meanwhile. Every unreferenced chunk counts as touched now, so the grace period covers such readers.
        index.db.prepare('UPDATE chunks SET touched_at = ? WHERE refcount = 0').run(now());
        log(
          `index rebuilt: ${result.snapshots} snapshots, ${result.chunks} chunks in ${((now() - started) / 1000).toFixed(1)} s`,
        );
      }
    }
    // The API binds sessions to tokens in memory, so a session of an earlier process cannot be used again,
    // and what it was told is present was known only to that process: it is closed.
    const stale = index.reapExpiredSessions(Number.POSITIVE_INFINITY);
    if (stale.length > 0) log(`${stale.length} upload session(s) of an earlier run closed`);
    const repo = new Repository(o.storage, index, config, o.indexPath, codec, settings);
    await repo.adoptUnindexedManifests();
    await repo.reconcileProtection();
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

  /**
   * The index's protected flags follow the markers in storage: a protect or unprotect interrupted between
   * its storage write and its index update is finished (or undone) here as storage says.
   */
  private async reconcileProtection(): Promise<void> {
    const marked = await this.protection.markedIds();
    for (const id of marked) {
      const s = this.index.getSnapshot(id);
      if (s && !s.protected) {
        this.index.setProtected(id, true);
        this.opts.log(`snapshot ${id} is protected in storage; the index now says so too`);
      }
    }
    for (const id of this.index.protectedIds()) {
      if (!marked.has(id)) {
        this.index.setProtected(id, false);
        this.opts.log(`snapshot ${id} has no protection marker in storage; the index no longer protects it`);
      }
    }
  }

  get chunker(): ChunkerParams {
    return { ...this.config.chunker };
  }

  now(): number {
    return this.opts.now();
  }

  get repositoryId(): string {
    return this.config.id;
  }

  /** How this repository names and seals its objects (tests and tools that look at storage directly). */
  get storedObjects(): ObjectCodec {
    return this.codec;
  }

  // ---- sessions

  async beginSession(
    host: string,
    disk: string,
    tenant: string = DEFAULT_TENANT,
    key?: SessionKey,
  ): Promise<SessionInfo> {
    checkName('host name', host);
    checkName('disk name', disk);
    checkName('tenant name', tenant);
    if (key !== undefined && !/^[0-9a-f]{32}$/.test(key.keyId))
      throw new InvalidInputError('a key id is 32 lowercase hex characters');
    return this.mutation(() => {
      const now = this.opts.now();
      const previous = this.newestInDomain(tenant, host, disk, key?.keyId);
      const row: SessionRow = {
        id: randomBytes(16).toString('hex'),
        tenant,
        host,
        disk,
        started_at: now,
        expires_at: Math.min(now + this.opts.leaseMs, now + this.opts.maxAgeMs),
        base_snapshot: previous?.id ?? null,
      };
      this.index.insertSession(row);
      this.touched.set(row.id, new TouchedSet());
      if (key !== undefined) this.sessionKeys.set(row.id, key.keyId);
      return this.sessionInfo(row);
    });
  }

  /**
   * The newest snapshot of a disk made with the same end-to-end key (or none, for a plaintext session):
   * only its chunk ids can seed the session's known-set.
   */
  private newestInDomain(tenant: string, host: string, disk: string, keyId: string | undefined) {
    const newest = this.index.newestSnapshot(tenant, host, disk);
    if (newest === undefined || newest.e2e?.keyId === keyId) return newest;
    const all = this.index.listSnapshots({ tenant, host, disk });
    for (let i = all.length - 1; i >= 0; i--) if (all[i]?.e2e?.keyId === keyId) return all[i];
    return undefined;
  }

  touchSession(sessionId: string): SessionInfo {
    return this.sessionInfo(this.liveSession(sessionId));
  }

  async abort(sessionId: string): Promise<void> {
    this.liveSession(sessionId);
    this.endSession(sessionId);
  }

  private endSession(sessionId: string): void {
    this.index.deleteSession(sessionId);
    this.touched.delete(sessionId);
    this.sessionKeys.delete(sessionId);
  }

  /**
   * The session, its lease renewed up to its maximum age; NotFound when unknown or expired (an expired one
   * is removed).
   */
  private liveSession(sessionId: string): SessionRow {
    const row = typeof sessionId === 'string' ? this.index.getSession(sessionId) : undefined;
    const now = this.opts.now();
    if (!row || row.expires_at <= now) {
      if (row) this.endSession(row.id);
      throw new NotFoundError(
        `session ${String(sessionId).slice(0, 64)} is unknown or has expired; start a new one`,
        { session: sessionId },
      );
    }
    row.expires_at = Math.min(now + this.opts.leaseMs, row.started_at + this.opts.maxAgeMs);
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
      previous: this.newestInDomain(row.tenant, row.host, row.disk, this.sessionKeys.get(row.id)) ?? null,
      ...(this.sessionKeys.has(row.id) ? { keyId: this.sessionKeys.get(row.id) } : {}),
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
    const touched = this.touchedSet(session.id);
    const seen = new Set<string>();
    const missing: number[] = [];
    hex.forEach((id, i) => {
      if (present.has(id)) {
        // Synchronously with the answer: gc cannot run between "present" and the record of it.
        touched.add(blobs[i] as Buffer);
        return;
      }
      if (seen.has(id)) return;
      seen.add(id);
      missing.push(i);
    });
    return missing;
  }

  chunksReadableBy(tenant: string, ids: string[]): string[] {
    const present = this.index.presentForTenant(
      tenant,
      ids.map((id) => Buffer.from(checkChunkId(id), 'hex')),
      undefined,
      true,
    );
    return ids.filter((id) => present.has(id));
  }

  async putChunk(
    sessionId: string,
    id: string,
    payload: Buffer,
    encoding: 'raw' | 'zstd' | 'sealed',
  ): Promise<{ stored: boolean; written: boolean }> {
    return this.mutation(async () => {
      const session = this.liveSession(sessionId);
      const keyId = this.sessionKeys.get(session.id);
      // A session is either end to end (sealed chunks of its key only) or plaintext (hash-checked ones only).
      if (keyId !== undefined && encoding !== 'sealed')
        throw new InvalidInputError(
          `session ${sessionId} was opened with an end-to-end key: its chunks must be sealed`,
        );
      // The hash (or for a sealed chunk, its binding to the session's key) is checked before anything else,
      // also for a chunk already stored: ownership is granted only to a tenant that proved it holds the bytes.
      const upload = this.chunks.verifyUpload(id, payload, encoding as ChunkEncoding, keyId);
      // The answer says whether the tenant held a good copy before, never whether another tenant does:
      // `stored` is true unless this tenant already owned the chunk and its copy is not known damaged.
      let checkedGood = false;
      for (;;) {
        await this.deletions.settled(id);
        if (this.deletions.has(id)) continue;
        const row = this.index.getChunk(id);
        if (!row || row.stored_size === 0 || this.index.isDamaged(id)) break;
        if (this.index.ownsChunk(id, session.tenant)) {
          this.index.claimChunk(id, session.tenant, this.opts.now());
          this.touchedSet(session.id).add(Buffer.from(id, 'hex'));
          return { stored: false, written: false };
        }
        if (checkedGood) {
          // Synchronously after the re-check above: gc cannot have removed the row in between.
          this.index.claimChunk(id, session.tenant, this.opts.now());
          this.touchedSet(session.id).add(Buffer.from(id, 'hex'));
          return { stored: true, written: false };
        }
        // A new owner will reference the stored copy: it must be good (a copy written by an older server
        // may not be), else this upload replaces it. The row is looked at again after the read.
        if ((await this.goodStoredCopy(id)) === undefined) break;
        checkedGood = true;
      }
      // From here to the index row, gc must leave this chunk alone (its row, which a damaged or missing copy
      // still has, and its object): it is marked uploading synchronously with the checks above, before the
      // first await.
      const prepared = this.chunks.prepare(id, upload, payload, encoding as ChunkEncoding);
      this.uploads.set(id, (this.uploads.get(id) ?? 0) + 1);
      try {
        const storedSize = prepared.bytes.length;
        await this.chunks.write(prepared);
        this.index.recordStoredChunk(id, prepared.rawLength, storedSize, session.tenant, this.opts.now());
        this.touchedSet(session.id).add(Buffer.from(id, 'hex'));
      } finally {
        const n = (this.uploads.get(id) ?? 1) - 1;
        if (n > 0) this.uploads.set(id, n);
        else this.uploads.delete(id);
      }
      return { stored: true, written: true };
    });
  }

  /**
   * Reads the stored copy whole from storage and checks all a server can: the encoding of a good copy, or
   * undefined for a damaged one, which is marked so.
   */
  private async goodStoredCopy(id: string): Promise<ChunkEncoding | undefined> {
    try {
      return (await this.chunks.readStored(id, { bypassCache: true })).encoding;
    } catch (err) {
      if (!isDamage(err)) throw err;
      this.noteDamage(id, err as Error);
      return undefined;
    }
  }

  /**
   * A read found the stored copy of an indexed chunk corrupt or absent: it is marked damaged, so the missing
   * query reports it to every tenant and the next upload of the chunk replaces it.
   */
  private noteDamage(id: string, err: Error): void {
    const row = this.index.getChunk(id);
    if (!row || row.stored_size === 0) return;
    this.index.markDamaged(id, err.message, this.opts.now());
    this.opts.log(`chunk ${id}: stored copy is damaged (${err.message}); the next upload of it replaces it`);
  }

  /**
   * A reader (a restore, `verify --key`) found chunk `id` wrong. The stored copy is read again from storage
   * and checked as fully as the server can: damage found that way is noted as any read's. A sealed chunk
   * whose copy passes those checks (its tag and keyed id only a holder of its key can check) is marked
   * damaged on the word of `tenant`, who owns it (a tenant reads only the chunks it owns), or of a global
   * admin (`tenant` undefined): the holders of its key are the only ones who can judge it, and the only ones
   * whose snapshots name it. A copy the server can check in full and finds good stays as it is (the
   * reader's trouble lay elsewhere). A chunk the tenant may not read, or that is not stored, is 'absent'.
   * With `takeWord` false (a reporter who holds no key: a global reader), a sealed copy that passes the
   * server's checks stays as it is too.
   * Once damaged, the missing query reports it and the next upload of it replaces the copy.
   */
  async reportDamage(
    tenant: string | undefined,
    id: string,
    detail: string,
    takeWord = true,
  ): Promise<'damaged' | 'good' | 'absent'> {
    checkChunkId(id);
    return this.mutation(async () => {
      const row = this.index.getChunk(id);
      if (!row || row.stored_size === 0) return 'absent';
      if (tenant !== undefined && this.chunksReadableBy(tenant, [id]).length === 0) return 'absent';
      if (this.index.isDamaged(id)) return 'damaged';
      // Whatever the verdict, the next read of it goes to storage: what the reader got may have come from
      // the read cache.
      this.chunks.forget(id);
      const encoding = await this.goodStoredCopy(id);
      if (encoding === undefined) return 'damaged';
      if (encoding !== 'sealed' || !takeWord) return 'good';
      // Looked at again after the read: gc may have removed the chunk meanwhile.
      const still = this.index.getChunk(id);
      if (!still || still.stored_size === 0) return 'absent';
      const why = `a holder of its key found it wrong: ${detail}`;
      this.index.markDamaged(id, why, this.opts.now());
      this.opts.log(`chunk ${id}: ${why}; the next upload of it replaces it`);
      return 'damaged';
    });
  }

  /** Runs a chunk read; a damaged copy found on the way is noted before the error goes on. */
  private async damageNoted<T>(id: string, read: () => Promise<T>): Promise<T> {
    try {
      return await read();
    } catch (err) {
      if (isDamage(err) && typeof id === 'string' && HEX64.test(id)) this.noteDamage(id, err as Error);
      throw err;
    }
  }

  // ---- commit

  async commit(
    sessionId: string,
    body: AsyncIterable<Buffer | Uint8Array | string>,
    opts: CommitOptions = {},
  ): Promise<SnapshotInfo> {
    if (opts.id !== undefined) checkChunkId(opts.id);
    return this.mutation(async () => {
      const session = this.liveSession(sessionId);
      if (this.committing.has(sessionId))
        throw new ConflictError(`session ${sessionId} is already committing`);
      if (opts.id !== undefined) await this.claimSnapshotId(opts.id);
      this.committing.add(sessionId);
      try {
        return await this.commitLocked(session, body, opts.mayBackdate ?? true, opts.id);
      } finally {
        this.committing.delete(sessionId);
        if (opts.id !== undefined) this.claimedIds.delete(opts.id);
      }
    });
  }

  /**
   * Holds a given snapshot id for one commit. It must be free in the index and in storage (a manifest the
   * index does not know yet is still taken): a failed commit deletes the manifest it wrote under the id,
   * which must never be another snapshot's.
   */
  private async claimSnapshotId(id: string): Promise<void> {
    const taken = () => new ConflictError(`snapshot ${id} already exists`, { snapshot: id });
    if (this.claimedIds.has(id) || this.index.getSnapshot(id)) throw taken();
    this.claimedIds.add(id);
    try {
      if (await this.manifests.exists(id)) throw taken();
    } catch (err) {
      this.claimedIds.delete(id);
      throw err;
    }
  }

  private async commitLocked(
    session: SessionRow,
    body: AsyncIterable<Buffer | Uint8Array | string>,
    mayBackdate: boolean,
    givenId?: string,
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
    const receivedMs = this.opts.now();
    checkCommitTime(h.time, {
      receivedMs,
      sessionStartedMs: session.started_at,
      clockSkewMs: this.opts.clockSkewMs,
      mayBackdate,
    });
    checkUnreadableRanges(h);
    const keyId = this.sessionKeys.get(session.id);
    if ((h.e2e?.keyId ?? null) !== (keyId ?? null))
      throw new InvalidInputError(
        keyId === undefined
          ? 'an end-to-end manifest needs an upload session opened with its key'
          : `the session was opened with key ${keyId}; the manifest ${h.e2e ? `names key ${h.e2e.keyId}` : 'is not end to end'}`,
      );
    const header: StoredHeader = {
      ...h,
      id: givenId ?? randomBytes(32).toString('hex'),
      tenant: session.tenant,
      receivedAt: new Date(receivedMs).toISOString(),
    };
    // The manifest goes to storage as it arrives, each piece checked first and its references staged;
    // nothing of it is held whole.
    const staging = this.index.stageReferences();
    try {
      await this.manifests.writeStreamed(header, this.checkedEntries(session, reader, staging));
      try {
        await this.countReferences(session, header, staging);
      } catch (err) {
        await this.manifests
          .delete(header.id)
          .catch((e: Error) =>
            this.opts.log(
              `snapshot ${header.id}: its manifest could not be removed after a failed commit: ${e.message}`,
            ),
          );
        throw err;
      }
    } finally {
      staging.drop();
    }
    this.touched.delete(session.id);
    this.sessionKeys.delete(session.id);
    const info = this.index.getSnapshot(header.id);
    if (!info) throw new Error(`snapshot ${header.id} vanished right after its commit`);
    this.opts.log(
      `snapshot ${info.id} committed: ${info.host}/${info.disk}, ${info.chunkCount} chunks, tenant ${info.tenant}`,
    );
    return info;
  }

  /**
   * The commit body's entries in pieces of REFERENCE_SLICE, each checked before it is passed on to storage:
   * every chunk present for the tenant (not owned by the tenant counts as missing: another tenant's chunk
   * must be uploaded, proving the bytes are held, before it can be referenced, so commit is no oracle for
   * other tenants' data), every length right. Missing chunks are collected to the end of the body (up to
   * MAX_MISSING_REPORTED) and then thrown as one Conflict; the manifest's own checks (sum of lengths,
   * trailer) throw at the end too. Between pieces the event loop gets a turn, so a commit of millions of
   * entries does not hold up other requests, and the session's lease is renewed.
   */
  private async *checkedEntries(
    session: SessionRow,
    reader: ManifestReader,
    staging: ReferenceStaging,
  ): AsyncGenerator<Buffer> {
    const missing = new Set<string>();
    let first = 0;
    for await (const batch of reader.entryBatches(REFERENCE_SLICE)) {
      this.renewDuringCommit(session);
      const ids: Buffer[] = [];
      for (let at = 0; at < batch.length; at += MANIFEST_ENTRY_BYTES)
        ids.push(batch.subarray(at, at + ID_BYTES));
      if (missing.size < MAX_MISSING_REPORTED) {
        const present = this.index.presentForTenant(session.tenant, ids);
        for (const id of ids) {
          const hex = id.toString('hex');
          if (!present.has(hex) && missing.size < MAX_MISSING_REPORTED) missing.add(hex);
        }
      }
      // Lengths are checked only while nothing is missing: a missing chunk's length is not known.
      if (missing.size === 0) {
        await this.checkEntryLengths(batch, first);
        staging.add(batch);
        yield batch;
      }
      first += ids.length;
      await yieldToEventLoop();
    }
    if (missing.size > 0) throw missingConflict([...missing]);
  }

  /**
   * Counts the staged references (the manifest is in storage by now) in transactions of REFERENCE_SLICE
   * chunks, in id order, the event loop getting a turn between them, then inserts the snapshot row and
   * closes the session. A crash half way leaves a manifest the index does not know with some references
   * counted: at the next open it is adopted by rebuilding the index from storage, which recounts
   * everything, so no counted reference ever points at nothing. A chunk gc removed since the first check (a
   * session that expired) fails the commit with Conflict; what was counted is taken back.
   */
  private async countReferences(
    session: SessionRow,
    header: StoredHeader,
    staging: ReferenceStaging,
  ): Promise<void> {
    let last: Buffer | undefined;
    try {
      for (;;) {
        this.renewDuringCommit(session);
        const piece = staging.countNext(last, REFERENCE_SLICE, header.tenant);
        if (piece.missing.length > 0) throw missingConflict(piece.missing);
        if (piece.last === undefined) break;
        last = piece.last;
        await yieldToEventLoop();
      }
      this.index.finishCommit(header, session.id);
    } catch (err) {
      try {
        for (let at: Buffer | undefined, upTo = last; upTo !== undefined; ) {
          at = staging.uncountNext(at, REFERENCE_SLICE, upTo);
          if (at === undefined || at.equals(upTo)) break;
          await yieldToEventLoop();
        }
      } catch (e) {
        this.opts.log(
          `snapshot ${header.id}: references counted by a failed commit could not be taken back (${(e as Error).message}); their chunks stay until a reindex`,
        );
      }
      throw err;
    }
  }

  /** A long commit keeps its session alive: gc's protection of the chunks it names depends on it. */
  private renewDuringCommit(session: SessionRow): void {
    const expires = this.opts.now() + this.opts.leaseMs;
    if (expires - session.expires_at < 10_000) return;
    session.expires_at = expires;
    this.index.extendSession(session.id, expires);
  }

  /**
   * Each entry's length must be its chunk's real length (a snapshot naming a 1000-byte chunk as 4 GiB
   * cannot be restored) and within the chunker's maximum. The real length is the one the index recorded
   * from the verified upload; where they differ, the stored chunk's header decides, since an index rebuilt
   * from storage takes lengths from the manifests (and is corrected here).
   */
  private async checkEntryLengths(batch: Buffer, first: number): Promise<void> {
    const ids: Buffer[] = [];
    for (let at = 0; at < batch.length; at += MANIFEST_ENTRY_BYTES)
      ids.push(batch.subarray(at, at + ID_BYTES));
    const sizes = this.index.rawSizes(ids);
    const max = this.config.chunker.max;
    for (const m of entryLengthMismatches(batch, first, max, (c) => sizes.get(c))) {
      if (m.claimed <= max && m.actual !== undefined) {
        const head = await this.chunks.readHeader(m.chunk).catch(() => undefined);
        if (head?.rawLength === m.claimed) {
          this.index.setRawSize(m.chunk, m.claimed);
          sizes.set(m.chunk, m.claimed);
          continue;
        }
      }
      throw new InvalidInputError(`bad manifest: ${describeMismatch(m, max)}`, {
        entry: m.entry,
        chunk: m.chunk,
      });
    }
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
    return this.damageNoted(id, () => this.chunks.readRaw(id));
  }

  async readStoredChunk(id: string): Promise<StoredChunk> {
    return this.damageNoted(id, () => this.chunks.readStored(id));
  }

  async readStoredChunkUnverified(id: string): Promise<StoredChunk> {
    return this.damageNoted(id, () => this.chunks.readStoredUnverified(id));
  }

  async leaseStoredChunkUnverified(id: string): Promise<ChunkLease> {
    return this.damageNoted(id, () => this.chunks.leaseStoredUnverified(id));
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
      // The index flag answers fast; the marker is the truth (a protect may have stored it a moment ago).
      if (this.requireSnapshot(id).protected || (await this.protection.isMarked(id)))
        throw new SnapshotProtectedError(id);
      const alreadyPending = this.deletesPending.has(id);
      this.deletesPending.add(id);
      let rowRemoved = false;
      try {
        // Staged whole before lowering anything: a manifest that fails half way must not lower half its
        // counts. Staged on disk, not held in memory: a 16 TiB disk's manifest holds 16 million entries.
        const staging = this.index.stageReferences();
        try {
          for await (const batch of this.manifests.entryBatches(id)) staging.add(batch);
          if (!this.index.beginRemoveSnapshot(id, staging, this.opts.now())) {
            if (this.index.getSnapshot(id)?.protected) throw new SnapshotProtectedError(id);
            throw new NotFoundError(`no snapshot ${id}`, { snapshot: id });
          }
          rowRemoved = true;
          await this.lowerReferences(id, staging);
        } finally {
          staging.drop();
        }
        // After the counts: a crash here leaves a manifest without a row, which the next open adopts again
        // (keeping data), never a row whose manifest is gone.
        await this.manifests.delete(id);
      } catch (err) {
        if (!rowRemoved && !alreadyPending) this.deletesPending.delete(id);
        if (rowRemoved)
          this.opts.log(
            `snapshot ${id}: its delete stopped (${(err as Error).message}); gc keeps the chunks it names, and the next start brings it back: delete it again then`,
          );
        throw err;
      }
      this.deletesPending.delete(id);
      this.opts.log(`snapshot ${id} deleted`);
    });
  }

  /**
   * The chunks named by the manifests of snapshots being deleted, or whose delete stopped half way (see
   * `deletesPending`). A manifest already gone was deleted for good: it holds nothing back.
   */
  private async chunksOfPendingDeletes(): Promise<{ snapshots: Set<string>; chunks: Set<string> }> {
    const snapshots = new Set(this.deletesPending);
    const chunks = new Set<string>();
    for (const id of snapshots) {
      try {
        for await (const batch of this.manifests.entryBatches(id))
          for (let at = 0; at < batch.length; at += MANIFEST_ENTRY_BYTES)
            chunks.add(batch.toString('hex', at, at + 32));
      } catch (err) {
        if (!(isDiskvaultError(err) && err.code === 'NotFound')) throw err;
      }
    }
    return { snapshots, chunks };
  }

  /**
   * Lowers a removed snapshot's counts in pieces, the event loop getting a turn between them, so the server
   * keeps answering while a large disk's snapshot is deleted. Every piece leaves each count at or above what
   * the remaining snapshots need. Stopped half way (a crash, a failing index), the row is gone and the
   * manifest is still in storage: the next open adopts that manifest by rebuilding the index from storage
   * (adoptUnindexedManifests), which brings the snapshot back with exact counts.
   */
  private async lowerReferences(id: string, staging: ReferenceStaging): Promise<void> {
    let underflow = 0;
    try {
      for (let after: Buffer | undefined; ; ) {
        const piece = staging.lowerNext(after, REFERENCE_SLICE);
        underflow += piece.underflow;
        if (piece.last === undefined) break;
        after = piece.last;
        await yieldToEventLoop();
      }
    } catch (err) {
      this.opts.log(
        `snapshot ${id}: its delete stopped after lowering part of its counts (${(err as Error).message}); the index is rebuilt from storage at the next start, which restores the snapshot`,
      );
      throw err;
    }
    if (underflow > 0)
      this.opts.log(
        `snapshot ${id}: ${underflow} references had no count to lower; the index was inconsistent (run verify)`,
      );
  }

  /** The policy's plan, with every protected snapshot kept (reason "protected"), whatever the rules say. */
  planForget(policy: RetentionPolicy, filter?: SnapshotFilter): ForgetPlan {
    const plan = planRetention(this.index.listSnapshots(filter), policy);
    for (const group of plan.groups) {
      for (const k of group.keep) if (k.snapshot.protected) k.reasons.push('protected');
      const spared = group.remove.filter((s) => s.protected);
      if (spared.length === 0) continue;
      group.remove = group.remove.filter((s) => !s.protected);
      group.keep.push(...spared.map((snapshot) => ({ snapshot, reasons: ['protected'] })));
      group.keep.sort((a, b) => Date.parse(b.snapshot.time) - Date.parse(a.snapshot.time));
    }
    return plan;
  }

  async applyForget(
    plan: ForgetPlan,
    opts: { onProgress?: (p: VerifyProgress) => void } = {},
  ): Promise<{ removed: number }> {
    let removed = 0;
    const total = plan.groups.reduce((n, g) => n + g.remove.length, 0);
    let done = 0;
    for (const group of plan.groups) {
      for (const snap of group.remove) {
        opts.onProgress?.({ phase: 'forget', done: done++, total });
        const now = this.index.getSnapshot(snap.id);
        // Already gone: forget is idempotent. Protected since the plan was made: kept.
        if (!now || now.protected) continue;
        try {
          await this.deleteSnapshot(snap.id);
          removed++;
        } catch (err) {
          if (!(err instanceof NotFoundError) && !isProtectedRefusal(err)) throw err;
        }
      }
    }
    return { removed };
  }

  /**
   * Protect: the marker is stored first, then the flag; unprotect: the marker goes first. Either way a
   * crash in between leaves storage saying what the caller asked for last, and the next start (or a
   * rebuild) brings the index in line. A delete racing a protect either removes the snapshot first (then the
   * protect finds no row, takes its marker back and answers NotFound) or is refused.
   */
  async setProtected(id: string, protect: boolean): Promise<SnapshotInfo> {
    return this.mutation(async () => {
      this.requireSnapshot(id);
      if (protect) {
        await this.protection.mark(id, new Date(this.opts.now()).toISOString());
        if (!this.index.setProtected(id, true)) {
          await this.protection.unmark(id);
          throw new NotFoundError(`no snapshot ${id}`, { snapshot: id });
        }
      } else {
        await this.protection.unmark(id);
        this.index.setProtected(id, false);
      }
      this.opts.log(`snapshot ${id} ${protect ? 'protected' : 'no longer protected'}`);
      return this.requireSnapshot(id);
    });
  }

  async gc(opts: { onProgress?: (p: VerifyProgress) => void } = {}): Promise<GcReport> {
    if (this.gcRunning) throw new ConflictError('gc is already running');
    this.gcRunning = true;
    try {
      return await this.mutation(() => {
        const now = this.opts.now();
        const reaped = this.index.reapExpiredSessions(now);
        for (const id of reaped) {
          this.touched.delete(id);
          this.sessionKeys.delete(id);
        }
        const ended = this.index.reapExpiredLeases(now);
        if (reaped.length + ended.length > 0)
          this.opts.log(`gc: ${reaped.length} expired sessions and ${ended.length} expired leases closed`);
        return collectGarbage({
          index: this.index,
          chunks: this.chunks,
          storage: this.storage,
          deletions: this.deletions,
          uploading: (id) => this.uploads.has(id),
          chunksOfPendingDeletes: () => this.chunksOfPendingDeletes(),
          pendingDeletes: () => [...this.deletesPending],
          sessions: () =>
            this.index.listSessions().map((r) => ({
              id: r.id,
              tenant: r.tenant,
              host: r.host,
              disk: r.disk,
              expiresAt: r.expires_at,
              touched: this.touched.get(r.id),
            })),
          now: this.opts.now,
          graceMs: this.opts.graceMs,
          log: this.opts.log,
          ...(opts.onProgress ? { onProgress: opts.onProgress } : {}),
        });
      });
    } finally {
      this.gcRunning = false;
    }
  }

  // ---- snapshot leases

  async takeLease(snapshotId: string, owner: string): Promise<SnapshotLeaseInfo> {
    return this.mutation(() => {
      // Checked and recorded in one synchronous step: a forget either sees the lease or ran before it.
      const snap = this.requireSnapshot(snapshotId);
      const now = this.opts.now();
      const row: LeaseRow = {
        id: randomBytes(32).toString('hex'),
        snapshot: snap.id,
        tenant: snap.tenant,
        host: snap.host,
        disk: snap.disk,
        owner: String(owner),
        started_at: now,
        expires_at: now + this.opts.leaseMs,
      };
      this.index.insertLease(row);
      return leaseInfo(row);
    });
  }

  renewLease(leaseId: string): SnapshotLeaseInfo {
    const row = this.liveLease(leaseId);
    row.expires_at = this.opts.now() + this.opts.leaseMs;
    this.index.extendLease(row.id, row.expires_at);
    return leaseInfo(row);
  }

  async releaseLease(leaseId: string): Promise<void> {
    this.liveLease(leaseId);
    this.index.deleteLease(leaseId);
  }

  getLease(leaseId: string): SnapshotLeaseInfo | undefined {
    const row = typeof leaseId === 'string' ? this.index.getLease(leaseId) : undefined;
    return row && row.expires_at > this.opts.now() ? leaseInfo(row) : undefined;
  }

  countLeases(owner: string): number {
    return this.index.countLeases(owner, this.opts.now());
  }

  /** The lease; NotFound when unknown or ended (an ended one is removed with what it held). */
  private liveLease(leaseId: string): LeaseRow {
    const row = typeof leaseId === 'string' ? this.index.getLease(leaseId) : undefined;
    if (!row || row.expires_at <= this.opts.now()) {
      if (row) this.index.deleteLease(row.id);
      throw new NotFoundError(`lease ${String(leaseId).slice(0, 64)} is unknown or has ended`, {
        lease: leaseId,
      });
    }
    return row;
  }

  /** The session's touched set (a session this process did not open gets an empty one). */
  private touchedSet(sessionId: string): TouchedSet {
    let t = this.touched.get(sessionId);
    if (!t) {
      t = new TouchedSet();
      this.touched.set(sessionId, t);
    }
    return t;
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
        maxChunkBytes: this.config.chunker.max,
      },
      opts,
    );
  }

  stats(): RepoStats {
    const t = this.index.totals();
    const s = this.index.snapshotTotals();
    const unique = this.index.uniqueBytesPerTenant();
    const held = this.index.chunkTotalsPerTenant();
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
        chunks: held.get(tenant)?.chunks ?? 0,
        rawBytes: held.get(tenant)?.rawBytes ?? 0,
        uniqueBytes: unique.get(tenant) ?? 0,
      })),
    };
  }

  tenantStats(tenant: string): TenantStats {
    const own = this.index.listSnapshots({ tenant });
    const held = this.index.chunkTotalsPerTenant(tenant).get(tenant);
    return {
      tenant,
      snapshots: own.length,
      logicalBytes: own.reduce((n, snap) => n + snap.size, 0),
      chunks: held?.chunks ?? 0,
      rawBytes: held?.rawBytes ?? 0,
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

/** A read error that says the stored copy itself is bad (not that storage could not be reached). */
function isDamage(err: unknown): boolean {
  const code = (err as { code?: string }).code;
  return err instanceof DiskvaultError && (code === 'Corrupt' || code === 'NotFound');
}

/** Lets timers and I/O (other requests) run before the next piece of a long synchronous job. */
function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

function leaseInfo(r: LeaseRow): SnapshotLeaseInfo {
  return {
    id: r.id,
    snapshot: r.snapshot,
    tenant: r.tenant,
    host: r.host,
    disk: r.disk,
    owner: r.owner,
    expiresAt: new Date(r.expires_at).toISOString(),
  };
}

function missingConflict(missing: string[]): ConflictError {
  return new ConflictError(
    `${missing.length}${missing.length >= MAX_MISSING_REPORTED ? '+' : ''} chunks are missing; upload them and commit again`,
    {
      missing: missing.slice(0, MAX_MISSING_REPORTED),
    },
  );
}

/**
 * What storage cannot tell a rebuilt index: open sessions, snapshot leases and the chunks they hold,
 * ownership of uncommitted uploads, touch times, damage.
 */
function carryOver(fresh: IndexDb, oldPath: string): void {
  const db = fresh.db;
  db.prepare('ATTACH DATABASE ? AS old').run(oldPath);
  try {
    fresh.transaction(() => {
      db.exec(
        'INSERT OR IGNORE INTO sessions SELECT id, tenant, host, disk, started_at, expires_at, base_snapshot FROM old.sessions',
      );
      db.exec('INSERT OR IGNORE INTO leases SELECT * FROM old.leases');
      db.exec('INSERT OR IGNORE INTO held_chunks SELECT holder, chunk FROM old.held_chunks');
      db.exec(
        'INSERT OR IGNORE INTO owners (chunk, tenant) SELECT o.chunk, o.tenant FROM old.owners o WHERE EXISTS (SELECT 1 FROM chunks c WHERE c.id = o.chunk AND c.stored_size > 0)',
      );
      db.exec(
        'UPDATE chunks SET touched_at = MAX(touched_at, COALESCE((SELECT t.touched_at FROM old.chunks t WHERE t.id = chunks.id), 0))',
      );
      // Storage cannot say which copies a read found damaged; without this they would count as present again.
      db.exec(
        'INSERT OR IGNORE INTO damaged_chunks SELECT d.chunk, d.found_at, d.detail, d.healed_at FROM old.damaged_chunks d WHERE EXISTS (SELECT 1 FROM chunks c WHERE c.id = d.chunk AND c.stored_size > 0)',
      );
    });
  } finally {
    db.exec('DETACH DATABASE old');
  }
}
