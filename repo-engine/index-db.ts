import { randomBytes } from 'node:crypto';
import { chmodSync, closeSync, openSync, renameSync, rmSync, statSync } from 'node:fs';
import Database from 'better-sqlite3';
import type { ManifestHeader } from './manifest-codec.js';
import { MANIFEST_ENTRY_BYTES } from './manifest-codec.js';
import { effectiveTimeMs } from './snapshot-time.js';
import type { DiskSeries, SnapshotFilter, SnapshotInfo } from './types.js';

/**
 * The index: everything the engine must answer without reading storage. It is a cache of what storage
 * says (reindex rebuilds it from storage alone), except open sessions, snapshot leases (with the chunks of
 * held snapshots forgotten meanwhile) and the touch times that protect just-uploaded chunks from gc.
 *
 * Chunk ids are 32-byte BLOBs, not hex: half the bytes, and the primary-key B-tree stays shallow.
 * Invariant: an ownership row exists only for a chunk row whose object is stored (stored_size > 0). gc
 * deletes ownership with the chunk row, and reindex drops ownership of chunks missing from storage.
 */
export const INDEX_SCHEMA_VERSION = 3;
/** Lookups go to SQLite in batches of this many ids: one statement per batch, not per id. */
const LOOKUP_BATCH = 500;

const SCHEMA = `
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE chunks (
  id BLOB PRIMARY KEY,
  refcount INTEGER NOT NULL,
  raw_size INTEGER NOT NULL,
  -- 0 means "named by a manifest but absent from storage" (found by reindex): uploads repair it.
  stored_size INTEGER NOT NULL,
  touched_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX chunks_unreferenced ON chunks (touched_at) WHERE refcount = 0;
CREATE TABLE owners (chunk BLOB NOT NULL, tenant TEXT NOT NULL, PRIMARY KEY (chunk, tenant)) WITHOUT ROWID;
CREATE TABLE snapshots (
  id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  host TEXT NOT NULL,
  disk TEXT NOT NULL,
  -- The effective time (snapshot-time.ts): the agent's time, never later than received_at.
  time TEXT NOT NULL,
  time_ms INTEGER NOT NULL,
  received_at TEXT NOT NULL,
  size INTEGER NOT NULL,
  sha256 TEXT NOT NULL,
  chunk_count INTEGER NOT NULL,
  tags TEXT NOT NULL,
  unreadable TEXT NOT NULL,
  source_format TEXT NOT NULL,
  -- 1: forget, delete and gc never remove it (a copy of the protected/<id> marker in storage).
  protected INTEGER NOT NULL DEFAULT 0,
  -- JSON of the manifest's end-to-end part ({ keyId, sealed }), NULL for a plaintext snapshot.
  e2e TEXT
);
CREATE INDEX snapshots_by_group ON snapshots (tenant, host, disk, time_ms);
-- Stored copies a read found damaged (corrupt, or absent from storage): not present for anyone until an
-- upload replaces them. A replaced one keeps its row, healed_at set, until verify has reported it.
CREATE TABLE damaged_chunks (
  chunk BLOB PRIMARY KEY,
  found_at INTEGER NOT NULL,
  detail TEXT NOT NULL,
  healed_at INTEGER
) WITHOUT ROWID;
CREATE TABLE sessions (
  id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  host TEXT NOT NULL,
  disk TEXT NOT NULL,
  started_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL,
  -- The snapshot offered as the agent's known-set: the commit may name its chunks without asking.
  base_snapshot TEXT
);
CREATE TABLE leases (
  id TEXT PRIMARY KEY,
  snapshot TEXT NOT NULL,
  tenant TEXT NOT NULL,
  host TEXT NOT NULL,
  disk TEXT NOT NULL,
  owner TEXT NOT NULL,
  started_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL
);
CREATE INDEX leases_by_snapshot ON leases (snapshot);
CREATE INDEX leases_by_owner ON leases (owner);
-- The chunks of a held snapshot that was forgotten while held: kept until the holder (a lease or a
-- session's base snapshot) ends. Written only when a held snapshot is removed.
CREATE TABLE held_chunks (holder TEXT NOT NULL, chunk BLOB NOT NULL, PRIMARY KEY (holder, chunk)) WITHOUT ROWID;
CREATE INDEX held_chunks_by_chunk ON held_chunks (chunk);
`;

export interface SessionRow {
  id: string;
  tenant: string;
  host: string;
  disk: string;
  started_at: number;
  expires_at: number;
  base_snapshot: string | null;
}

export interface LeaseRow {
  id: string;
  snapshot: string;
  tenant: string;
  host: string;
  disk: string;
  /** Who took it (the API's token id), so a per-token limit can be counted. */
  owner: string;
  started_at: number;
  expires_at: number;
}

interface SnapshotRow {
  id: string;
  tenant: string;
  host: string;
  disk: string;
  time: string;
  received_at: string;
  size: number;
  sha256: string;
  chunk_count: number;
  tags: string;
  unreadable: string;
  source_format: string;
  protected: number;
  e2e: string | null;
}

export interface ChunkRow {
  refcount: number;
  raw_size: number;
  stored_size: number;
  touched_at: number;
}

/** A manifest header as the repository stores it: id, tenant and receipt time set. */
export type StoredHeader = ManifestHeader & { id: string; tenant: string; receivedAt: string };

/**
 * Why an existing index file cannot be used: it is missing, damaged (integrity check, not a database), of
 * another schema or of another repository. The repository rebuilds it from storage.
 */
export class IndexUnusable extends Error {}

/**
 * An index file that may be sound could not be opened now (EACCES, EMFILE, SQLITE_BUSY from another process,
 * an I/O error): the open fails and the file is left as it is, for a rebuild would lose what only it holds
 * (damage records, snapshot leases, sessions). `code` is the original error's.
 */
export class IndexOpenFailed extends Error {
  readonly code: string | undefined;
  constructor(path: string, cause: unknown) {
    super(
      `cannot open the index ${path}: ${(cause as Error).message}. The index was left as it is (it is not rebuilt, which would lose its damage records, snapshot leases and sessions): fix the cause (permissions, another process using it, too many open files) and try again`,
      { cause },
    );
    this.code = (cause as NodeJS.ErrnoException | undefined)?.code;
  }
}

/** SQLite's word that the file itself is damaged (not a database, or corrupt), not that it is out of reach. */
function isDamaged(err: unknown): boolean {
  const code = (err as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' && (code === 'SQLITE_NOTADB' || code.startsWith('SQLITE_CORRUPT'));
}

/** The WHERE clause selecting a filter's snapshots, or null when it can match none. */
function snapshotMatch(filter: SnapshotFilter): { where: string; args: unknown[] } | null {
  const where: string[] = [];
  const args: unknown[] = [];
  for (const column of ['host', 'disk', 'tenant'] as const) {
    const value = filter[column];
    if (value !== undefined) {
      where.push(`${column} = ?`);
      args.push(value);
    }
  }
  if (filter.hosts !== undefined) {
    if (filter.hosts.length === 0) return null;
    where.push(`host IN (${filter.hosts.map(() => '?').join(',')})`);
    args.push(...filter.hosts);
  }
  return { where: where.length ? `WHERE ${where.join(' AND ')}` : '', args };
}

function toInfo(r: SnapshotRow): SnapshotInfo {
  return {
    id: r.id,
    host: r.host,
    disk: r.disk,
    time: r.time,
    receivedAt: r.received_at,
    size: r.size,
    sha256: r.sha256,
    chunkCount: r.chunk_count,
    tags: JSON.parse(r.tags) as string[],
    unreadable: JSON.parse(r.unreadable) as [number, number][],
    sourceFormat: r.source_format,
    tenant: r.tenant,
    protected: r.protected === 1,
    ...(r.e2e ? { e2e: JSON.parse(r.e2e) as SnapshotInfo['e2e'] } : {}),
  };
}

const hexOf = (b: Buffer) => b.toString('hex');

export class IndexDb {
  private readonly stmtCache = new Map<string, Database.Statement>();

  private constructor(
    readonly db: Database.Database,
    readonly path: string,
  ) {}

  /** A new, empty index at `path` (any file there is replaced). */
  static create(path: string, repositoryId: string): IndexDb {
    removeDbFiles(path);
    // Created here with mode 0600 rather than by SQLite (0644 less the umask): SQLite gives the -wal and
    // -shm files the mode of the database file, so all three are readable by the server's user only.
    closeSync(openSync(path, 'wx', DB_FILE_MODE));
    const db = new Database(path);
    configure(db);
    db.exec(SCHEMA);
    const meta = db.prepare('INSERT INTO meta (key, value) VALUES (?, ?)');
    meta.run('repository_id', repositoryId);
    meta.run('schema_version', String(INDEX_SCHEMA_VERSION));
    return new IndexDb(db, path);
  }

  /**
   * Opens an existing index; IndexUnusable when it is missing, damaged, of another schema, or of another
   * repository (the caller rebuilds it), IndexOpenFailed for any other failure (the caller must not).
   */
  static openExisting(path: string, repositoryId: string): IndexDb {
    try {
      statSync(path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT')
        throw new IndexUnusable('the index file is missing');
      throw new IndexOpenFailed(path, err);
    }
    let db: Database.Database | undefined;
    try {
      restrictDbFiles(path);
      db = new Database(path, { fileMustExist: true });
      configure(db);
      const check = db.pragma('integrity_check') as { integrity_check: string }[];
      if (check.length !== 1 || check[0]?.integrity_check !== 'ok') {
        throw new IndexUnusable(
          `integrity check failed: ${check
            .map((c) => c.integrity_check)
            .slice(0, 3)
            .join('; ')}`,
        );
      }
      let rows: { key: string; value: string }[];
      try {
        rows = db.prepare('SELECT key, value FROM meta').all() as { key: string; value: string }[];
      } catch (err) {
        // No meta table, or not the columns this schema has (an SQL error, not an I/O or lock one).
        if ((err as { code?: unknown }).code === 'SQLITE_ERROR')
          throw new IndexUnusable(`not an index of this schema: ${(err as Error).message}`);
        throw err;
      }
      const meta = new Map(rows.map((r) => [r.key, r.value]));
      if (meta.get('schema_version') !== String(INDEX_SCHEMA_VERSION))
        throw new IndexUnusable(
          `schema version ${meta.get('schema_version')} is not ${INDEX_SCHEMA_VERSION}`,
        );
      if (meta.get('repository_id') !== repositoryId)
        throw new IndexUnusable('the index belongs to another repository (id mismatch)');
      return new IndexDb(db, path);
    } catch (err) {
      try {
        db?.close();
      } catch {}
      if (err instanceof IndexUnusable) throw err;
      if (isDamaged(err)) throw new IndexUnusable(`the index file is damaged: ${(err as Error).message}`);
      throw new IndexOpenFailed(path, err);
    }
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  private stmt(sql: string): Database.Statement {
    let s = this.stmtCache.get(sql);
    if (!s) {
      s = this.db.prepare(sql);
      this.stmtCache.set(sql, s);
    }
    return s;
  }

  transaction<T>(fn: () => T): T {
    return this.db.transaction(fn)();
  }

  // ---- sessions

  insertSession(s: SessionRow): void {
    this.stmt(
      'INSERT INTO sessions (id, tenant, host, disk, started_at, expires_at, base_snapshot) VALUES (@id, @tenant, @host, @disk, @started_at, @expires_at, @base_snapshot)',
    ).run(s);
  }
  getSession(id: string): SessionRow | undefined {
    return this.stmt('SELECT * FROM sessions WHERE id = ?').get(id) as SessionRow | undefined;
  }
  listSessions(): SessionRow[] {
    return this.stmt('SELECT * FROM sessions ORDER BY started_at, id').all() as SessionRow[];
  }
  extendSession(id: string, expiresAt: number): void {
    this.stmt('UPDATE sessions SET expires_at = ? WHERE id = ?').run(expiresAt, id);
  }
  /** Ends a session and whatever it held. */
  deleteSession(id: string): void {
    this.transaction(() => {
      this.stmt('DELETE FROM sessions WHERE id = ?').run(id);
      this.stmt('DELETE FROM held_chunks WHERE holder = ?').run(id);
    });
  }
  /** Ends every session whose lease ended by `now` (every session when `now` is Infinity); their ids. */
  reapExpiredSessions(now: number): string[] {
    return this.transaction(() => {
      const ids = (
        this.stmt('SELECT id FROM sessions WHERE expires_at <= ?')
          .raw()
          .all(Number.isFinite(now) ? now : Number.MAX_SAFE_INTEGER) as [string][]
      ).map((r) => r[0]);
      for (const id of ids) this.deleteSession(id);
      return ids;
    });
  }

  // ---- snapshot leases

  insertLease(l: LeaseRow): void {
    this.stmt(
      'INSERT INTO leases (id, snapshot, tenant, host, disk, owner, started_at, expires_at) VALUES (@id, @snapshot, @tenant, @host, @disk, @owner, @started_at, @expires_at)',
    ).run(l);
  }
  getLease(id: string): LeaseRow | undefined {
    return this.stmt('SELECT * FROM leases WHERE id = ?').get(id) as LeaseRow | undefined;
  }
  listLeases(): LeaseRow[] {
    return this.stmt('SELECT * FROM leases ORDER BY started_at, id').all() as LeaseRow[];
  }
  extendLease(id: string, expiresAt: number): void {
    this.stmt('UPDATE leases SET expires_at = ? WHERE id = ?').run(expiresAt, id);
  }
  /** Live leases `owner` holds at `now`. */
  countLeases(owner: string, now: number): number {
    return (
      this.stmt('SELECT COUNT(*) AS n FROM leases WHERE owner = ? AND expires_at > ?').get(owner, now) as {
        n: number;
      }
    ).n;
  }
  /** Ends a lease and the chunks it kept. */
  deleteLease(id: string): boolean {
    return this.transaction(() => {
      const gone = this.stmt('DELETE FROM leases WHERE id = ?').run(id).changes === 1;
      this.stmt('DELETE FROM held_chunks WHERE holder = ?').run(id);
      return gone;
    });
  }
  reapExpiredLeases(now: number): string[] {
    return this.transaction(() => {
      const ids = (this.stmt('SELECT id FROM leases WHERE expires_at <= ?').raw().all(now) as [string][]).map(
        (r) => r[0],
      );
      for (const id of ids) this.deleteLease(id);
      return ids;
    });
  }
  /** Chunks kept for each holder of a forgotten snapshot. */
  heldChunkCounts(): Map<string, number> {
    const rows = this.stmt('SELECT holder, COUNT(*) AS n FROM held_chunks GROUP BY holder').all() as {
      holder: string;
      n: number;
    }[];
    return new Map(rows.map((r) => [r.holder, r.n]));
  }

  // ---- chunks

  getChunk(id: string): ChunkRow | undefined {
    return this.stmt('SELECT refcount, raw_size, stored_size, touched_at FROM chunks WHERE id = ?').get(
      Buffer.from(id, 'hex'),
    ) as ChunkRow | undefined;
  }

  /**
   * Records a stored chunk (or repairs a row whose object was lost or damaged: the damage is marked
   * healed), owned by `tenant`, touched now. The raw size is the verified one.
   */
  recordStoredChunk(id: string, rawSize: number, storedSize: number, tenant: string, now: number): void {
    const blob = Buffer.from(id, 'hex');
    this.transaction(() => {
      this.stmt(
        `INSERT INTO chunks (id, refcount, raw_size, stored_size, touched_at) VALUES (?, 0, ?, ?, ?)
         ON CONFLICT (id) DO UPDATE SET raw_size = excluded.raw_size, stored_size = excluded.stored_size,
           touched_at = excluded.touched_at`,
      ).run(blob, rawSize, storedSize, now);
      this.stmt('INSERT OR IGNORE INTO owners (chunk, tenant) VALUES (?, ?)').run(blob, tenant);
      this.stmt('UPDATE damaged_chunks SET healed_at = ? WHERE chunk = ? AND healed_at IS NULL').run(
        now,
        blob,
      );
    });
  }

  /** The raw size the index records for each of `ids` (32-byte blobs) that has a row. */
  rawSizes(ids: Buffer[]): Map<string, number> {
    const out = new Map<string, number>();
    for (let i = 0; i < ids.length; i += LOOKUP_BATCH) {
      const batch = ids.slice(i, i + LOOKUP_BATCH);
      const rows = this.stmt(
        `SELECT id, raw_size FROM chunks WHERE id IN (${batch.map(() => '?').join(',')})`,
      )
        .raw()
        .all(...batch) as [Buffer, number][];
      for (const [id, size] of rows) out.set(hexOf(id), size);
    }
    return out;
  }

  /** Corrects a raw size a rebuilt index took from a manifest, once the stored chunk's header settled it. */
  setRawSize(id: string, rawSize: number): void {
    this.stmt('UPDATE chunks SET raw_size = ? WHERE id = ?').run(rawSize, Buffer.from(id, 'hex'));
  }

  ownsChunk(id: string, tenant: string): boolean {
    return (
      this.stmt('SELECT 1 FROM owners WHERE chunk = ? AND tenant = ?').get(Buffer.from(id, 'hex'), tenant) !==
      undefined
    );
  }

  // ---- damaged copies

  /** A read found the stored copy damaged: nobody has the chunk until an upload replaces it. */
  markDamaged(id: string, detail: string, now: number): void {
    this.stmt(
      `INSERT INTO damaged_chunks (chunk, found_at, detail, healed_at) VALUES (?, ?, ?, NULL)
       ON CONFLICT (chunk) DO UPDATE SET found_at = excluded.found_at, detail = excluded.detail, healed_at = NULL`,
    ).run(Buffer.from(id, 'hex'), now, detail.slice(0, 500));
  }

  isDamaged(id: string): boolean {
    return (
      this.stmt('SELECT 1 FROM damaged_chunks WHERE chunk = ? AND healed_at IS NULL').get(
        Buffer.from(id, 'hex'),
      ) !== undefined
    );
  }

  /** Every damage record, healed or not (few: one per chunk a read found damaged since the last verify). */
  damageRecords(): { chunk: string; foundAt: number; detail: string; healedAt: number | null }[] {
    return (
      this.stmt('SELECT chunk, found_at, detail, healed_at FROM damaged_chunks ORDER BY chunk')
        .raw()
        .all() as [Buffer, number, string, number | null][]
    ).map(([chunk, foundAt, detail, healedAt]) => ({ chunk: hexOf(chunk), foundAt, detail, healedAt }));
  }

  /** Drops a damage record: verify has reported it healed, or found the copy good. */
  forgetDamage(id: string): void {
    this.stmt('DELETE FROM damaged_chunks WHERE chunk = ?').run(Buffer.from(id, 'hex'));
  }

  /** An upload of a chunk already stored: the uploader proved it holds the bytes, so it now owns them too. */
  claimChunk(id: string, tenant: string, now: number): void {
    const blob = Buffer.from(id, 'hex');
    this.transaction(() => {
      this.stmt('UPDATE chunks SET touched_at = ? WHERE id = ?').run(now, blob);
      this.stmt('INSERT OR IGNORE INTO owners (chunk, tenant) VALUES (?, ?)').run(blob, tenant);
    });
  }

  /**
   * Of `ids` (32-byte blobs), the ones present for `tenant`: the row exists, its object is stored and not
   * known to be damaged (unless `damagedToo`: for reads, which then report the damage), and the tenant owns
   * it. Present ids are touched (gc protection for the session that asked). One transaction.
   */
  presentForTenant(tenant: string, ids: Buffer[], touchAt?: number, damagedToo = false): Set<string> {
    const present = new Set<string>();
    // A copy known to be damaged is missing for everyone, so the next backup that has it uploads it again.
    const anyDamaged =
      !damagedToo &&
      this.stmt('SELECT 1 FROM damaged_chunks WHERE healed_at IS NULL LIMIT 1').get() !== undefined;
    this.transaction(() => {
      for (let i = 0; i < ids.length; i += LOOKUP_BATCH) {
        const batch = ids.slice(i, i + LOOKUP_BATCH);
        const marks = batch.map(() => '?').join(',');
        // The owners table alone answers: an ownership row exists only for a stored chunk (invariant kept
        // by every writer), and skipping the join halves the cost of a 100,000-id query.
        let found = this.stmt(`SELECT chunk FROM owners WHERE tenant = ? AND chunk IN (${marks})`)
          .raw()
          .all(tenant, ...batch) as [Buffer][];
        if (anyDamaged && found.length > 0) {
          const damaged = new Set(
            (
              this.stmt(
                `SELECT chunk FROM damaged_chunks WHERE healed_at IS NULL AND chunk IN (${found.map(() => '?').join(',')})`,
              )
                .raw()
                .all(...found.map((f) => f[0])) as [Buffer][]
            ).map(([id]) => hexOf(id)),
          );
          if (damaged.size > 0) found = found.filter(([id]) => !damaged.has(hexOf(id)));
        }
        if (found.length === 0) continue;
        for (const [id] of found) present.add(hexOf(id));
        if (touchAt !== undefined) {
          // Only unreferenced rows need the touch (a referenced chunk is protected by its count, and the
          // asking session's touched set keeps it once the count drops to zero). Touching every present row
          // would dirty a random page per id: 100,000 ids cost seconds of WAL writes instead of milliseconds.
          this.stmt(
            `UPDATE chunks SET touched_at = ? WHERE refcount = 0 AND id IN (${found.map(() => '?').join(',')})`,
          ).run(touchAt, ...found.map((f) => f[0]));
        }
      }
    });
    return present;
  }

  /** A place for one manifest's references while it streams in, for a commit or a delete (see ReferenceStaging). */
  stageReferences(): ReferenceStaging {
    return new ReferenceStaging(this.db);
  }

  /** A commit's last step, once every reference is counted: the snapshot row, and the session closed. */
  finishCommit(header: StoredHeader, sessionId: string): void {
    this.transaction(() => {
      this.insertSnapshotRow(header);
      this.deleteSession(sessionId);
    });
  }

  insertSnapshotRow(h: StoredHeader): void {
    const timeMs = effectiveTimeMs(h.time, h.receivedAt);
    this.stmt(
      `INSERT INTO snapshots (id, tenant, host, disk, time, time_ms, received_at, size, sha256, chunk_count, tags, unreadable, source_format, e2e)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ).run(
      h.id,
      h.tenant,
      h.host,
      h.disk,
      new Date(timeMs).toISOString(),
      timeMs,
      h.receivedAt,
      h.size,
      h.sha256,
      h.chunkCount,
      JSON.stringify(h.tags),
      JSON.stringify(h.unreadable),
      h.sourceFormat,
      h.e2e ? JSON.stringify({ keyId: h.e2e.keyId, sealed: h.e2e.sealed }) : null,
    );
  }

  /** Sets or clears a snapshot's protected flag; false when there is no such snapshot. */
  setProtected(id: string, on: boolean): boolean {
    return this.stmt('UPDATE snapshots SET protected = ? WHERE id = ?').run(on ? 1 : 0, id).changes === 1;
  }

  protectedIds(): string[] {
    return (this.stmt('SELECT id FROM snapshots WHERE protected = 1').raw().all() as [string][]).map(
      (r) => r[0],
    );
  }

  /**
   * A delete's first step, in one transaction: removes the snapshot row and keeps every chunk `staged` holds
   * (its manifest's references, staged whole before this is called) for each reader still holding the
   * snapshot. False when the row was already gone (a concurrent delete) or is protected: then nothing
   * changes. The counts come down afterwards, in pieces (ReferenceStaging.lowerNext).
   */
  beginRemoveSnapshot(id: string, staged: ReferenceStaging, now: number): boolean {
    const refs = `temp.${staged.table}`;
    return this.transaction(() => {
      // A protected row is never removed, whatever the caller checked before.
      if (this.stmt('DELETE FROM snapshots WHERE id = ? AND protected = 0').run(id).changes !== 1)
        return false;
      // A reader holding this snapshot (a lease, or a session offered it as its base) may still fetch or
      // name any of its chunks: they are kept for that holder until it ends. Other snapshots' references
      // protect a chunk only while they exist, so every chunk is recorded, not only those dropping to zero.
      // Recorded here, with the row's removal, so no holder can end between the two and leave rows behind.
      const holders = (
        this.stmt(
          'SELECT id FROM leases WHERE snapshot = ? AND expires_at > ? UNION SELECT id FROM sessions WHERE base_snapshot = ? AND expires_at > ?',
        )
          .raw()
          .all(id, now, id, now) as [string][]
      ).map((r) => r[0]);
      const hold = this.db.prepare(
        `INSERT OR IGNORE INTO held_chunks (holder, chunk) SELECT ?, chunk FROM ${refs}`,
      );
      for (const holder of holders) hold.run(holder);
      return true;
    });
  }

  /**
   * gc's first phase: removes rows of chunks no snapshot uses, nobody touched since `cutoff` and no holder
   * keeps, with their ownership, and returns them. A chunk in held_chunks is kept; `heldBy` names the
   * sessions that may still reference any other candidate (empty when none). Every holder that keeps a
   * chunk is counted in `kept`. One transaction: the refcount = 0 condition is evaluated inside it.
   */
  removeGarbage(
    cutoff: number,
    heldBy: (id: Buffer) => string[],
  ): { ids: string[]; bytes: number; held: number; kept: Map<string, number> } {
    return this.transaction(() => {
      const rows = this.stmt('SELECT id, stored_size FROM chunks WHERE refcount = 0 AND touched_at < ?')
        .raw()
        .all(cutoff) as [Buffer, number][];
      const holdersOf = this.stmt('SELECT holder FROM held_chunks WHERE chunk = ?').raw();
      const delChunk = this.stmt('DELETE FROM chunks WHERE id = ? AND refcount = 0');
      const delOwners = this.stmt('DELETE FROM owners WHERE chunk = ?');
      const delDamage = this.stmt('DELETE FROM damaged_chunks WHERE chunk = ?');
      const kept = new Map<string, number>();
      let bytes = 0;
      let held = 0;
      const ids: string[] = [];
      for (const [id, stored] of rows) {
        const holders = [...(holdersOf.all(id) as [string][]).map((r) => r[0]), ...heldBy(id)];
        if (holders.length > 0) {
          held++;
          for (const h of new Set(holders)) kept.set(h, (kept.get(h) ?? 0) + 1);
          continue;
        }
        if (delChunk.run(id).changes !== 1) continue;
        delOwners.run(id);
        delDamage.run(id);
        ids.push(hexOf(id));
        bytes += stored;
      }
      return { ids, bytes, held, kept };
    });
  }

  /** Whether `tenant` owns the chunk (a saturated session holds every chunk its tenant owns). */
  ownedBy(id: Buffer, tenant: string): boolean {
    return this.stmt('SELECT 1 FROM owners WHERE chunk = ? AND tenant = ?').get(id, tenant) !== undefined;
  }

  countUnreferenced(): number {
    return (this.stmt('SELECT COUNT(*) AS n FROM chunks WHERE refcount = 0').get() as { n: number }).n;
  }

  hasChunk(id: string): boolean {
    return this.stmt('SELECT 1 FROM chunks WHERE id = ?').get(Buffer.from(id, 'hex')) !== undefined;
  }

  /** Every chunk row, in id order: verify compares refcounts against a recount. */
  *iterateChunks(): Generator<{ id: string; refcount: number; storedSize: number }> {
    for (const [id, refcount, storedSize] of this.db
      .prepare('SELECT id, refcount, stored_size FROM chunks ORDER BY id')
      .raw()
      .iterate() as Iterable<[Buffer, number, number]>) {
      yield { id: hexOf(id), refcount, storedSize };
    }
  }

  // ---- snapshots

  getSnapshot(id: string): SnapshotInfo | undefined {
    const r = this.stmt('SELECT * FROM snapshots WHERE id = ?').get(id) as SnapshotRow | undefined;
    return r ? toInfo(r) : undefined;
  }

  listSnapshots(filter: SnapshotFilter = {}): SnapshotInfo[] {
    const match = snapshotMatch(filter);
    if (!match) return [];
    const sql = `SELECT * FROM snapshots ${match.where} ORDER BY time_ms, id`;
    return (this.db.prepare(sql).all(...match.args) as SnapshotRow[]).map(toInfo);
  }

  /** Each disk (tenant, host, disk) with snapshots: how many, and the newest; in that order. */
  diskSeries(filter: SnapshotFilter = {}): DiskSeries[] {
    const match = snapshotMatch(filter);
    if (!match) return [];
    // Counted on the group index alone, then one index probe per disk for its newest: 5 ms for 20,000
    // snapshots of 200 disks, where a window over the table took 75-120 ms (and /metrics runs it per scrape).
    const sql = `SELECT s.*, g.series_snapshots
      FROM (SELECT tenant, host, disk, COUNT(*) AS series_snapshots FROM snapshots ${match.where}
            GROUP BY tenant, host, disk) AS g
      JOIN snapshots AS s ON s.id = (
        SELECT id FROM snapshots AS n WHERE n.tenant = g.tenant AND n.host = g.host AND n.disk = g.disk
        ORDER BY n.time_ms DESC, n.id DESC LIMIT 1)
      ORDER BY g.tenant, g.host, g.disk`;
    return (this.db.prepare(sql).all(...match.args) as (SnapshotRow & { series_snapshots: number })[]).map(
      (r) => ({
        tenant: r.tenant,
        host: r.host,
        disk: r.disk,
        snapshots: r.series_snapshots,
        newest: toInfo(r),
      }),
    );
  }

  newestSnapshot(tenant: string, host: string, disk: string): SnapshotInfo | undefined {
    const r = this.stmt(
      'SELECT * FROM snapshots WHERE tenant = ? AND host = ? AND disk = ? ORDER BY time_ms DESC, id DESC LIMIT 1',
    ).get(tenant, host, disk) as SnapshotRow | undefined;
    return r ? toInfo(r) : undefined;
  }

  // ---- stats

  totals(): { uniqueChunks: number; rawBytes: number; storedBytes: number } {
    const r = this.stmt(
      'SELECT COUNT(*) AS n, COALESCE(SUM(raw_size), 0) AS raw, COALESCE(SUM(stored_size), 0) AS stored FROM chunks',
    ).get() as {
      n: number;
      raw: number;
      stored: number;
    };
    return { uniqueChunks: r.n, rawBytes: r.raw, storedBytes: r.stored };
  }

  snapshotTotals(): {
    snapshots: number;
    logicalBytes: number;
    perHost: { host: string; snapshots: number; logicalBytes: number }[];
    perTenant: Map<string, { snapshots: number; logicalBytes: number }>;
  } {
    const all = this.stmt('SELECT COUNT(*) AS n, COALESCE(SUM(size), 0) AS bytes FROM snapshots').get() as {
      n: number;
      bytes: number;
    };
    const perHost = (
      this.stmt(
        'SELECT host, COUNT(*) AS n, SUM(size) AS bytes FROM snapshots GROUP BY host ORDER BY host',
      ).all() as { host: string; n: number; bytes: number }[]
    ).map((r) => ({ host: r.host, snapshots: r.n, logicalBytes: r.bytes }));
    const perTenant = new Map(
      (
        this.stmt(
          'SELECT tenant, COUNT(*) AS n, SUM(size) AS bytes FROM snapshots GROUP BY tenant',
        ).all() as { tenant: string; n: number; bytes: number }[]
      ).map((r) => [r.tenant, { snapshots: r.n, logicalBytes: r.bytes }]),
    );
    return { snapshots: all.n, logicalBytes: all.bytes, perHost, perTenant };
  }

  /** Each tenant's distinct chunks and their raw bytes, from its own ownership rows only. */
  chunkTotalsPerTenant(tenant?: string): Map<string, { chunks: number; rawBytes: number }> {
    const rows = this.stmt(
      `SELECT o.tenant AS tenant, COUNT(*) AS n, COALESCE(SUM(c.raw_size), 0) AS raw
       FROM owners o JOIN chunks c ON c.id = o.chunk WHERE (? IS NULL OR o.tenant = ?) GROUP BY o.tenant`,
    ).all(tenant ?? null, tenant ?? null) as { tenant: string; n: number; raw: number }[];
    return new Map(rows.map((r) => [r.tenant, { chunks: r.n, rawBytes: r.raw }]));
  }

  /** Stored bytes of chunks that only this tenant owns: what deleting the tenant would free. */
  uniqueBytesPerTenant(): Map<string, number> {
    const rows = this.stmt(
      `SELECT o.tenant AS tenant, SUM(c.stored_size) AS bytes FROM owners o JOIN chunks c ON c.id = o.chunk
       WHERE NOT EXISTS (SELECT 1 FROM owners o2 WHERE o2.chunk = o.chunk AND o2.tenant <> o.tenant) GROUP BY o.tenant`,
    ).all() as { tenant: string; bytes: number }[];
    const tenants = this.stmt('SELECT DISTINCT tenant FROM owners').all() as { tenant: string }[];
    const out = new Map<string, number>(tenants.map((t) => [t.tenant, 0]));
    for (const r of rows) out.set(r.tenant, r.bytes);
    return out;
  }
}

/** Sorts before every chunk id: where a delete's first piece starts. */
const NO_CHUNK = Buffer.alloc(0);

/**
 * One manifest's references, gathered while it streams in (a commit's from its body, a delete's from
 * storage): a temporary table (in SQLite's temp database, a file of its own: neither the index's WAL nor
 * the process's heap holds them) of each chunk and how often the manifest names it, kept in id order.
 * Counting from it walks the chunks table in id order, so pieces of a few thousand ids committed one after
 * the other touch each index page about once, where the manifest's own (random) order would rewrite most
 * pages in every piece.
 */
export class ReferenceStaging {
  readonly table = `manifest_refs_${randomBytes(8).toString('hex')}`;
  private readonly addStmt: Database.Statement;
  private readonly nextStmt: Database.Statement;
  private readonly firstStmt: Database.Statement;
  private readonly bump: Database.Statement;
  private readonly lower: Database.Statement;
  private readonly lastOfNext: Database.Statement;
  private readonly underflowIn: Database.Statement;
  private readonly lowerIn: Database.Statement;
  private dropped = false;

  constructor(private readonly db: Database.Database) {
    db.exec(`CREATE TEMP TABLE ${this.table} (chunk BLOB PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID`);
    this.addStmt = db.prepare(
      `INSERT INTO temp.${this.table} (chunk, n) VALUES (?, 1) ON CONFLICT (chunk) DO UPDATE SET n = n + 1`,
    );
    this.firstStmt = db.prepare(`SELECT chunk, n FROM temp.${this.table} ORDER BY chunk LIMIT ?`).raw();
    this.nextStmt = db
      .prepare(`SELECT chunk, n FROM temp.${this.table} WHERE chunk > ? ORDER BY chunk LIMIT ?`)
      .raw();
    this.bump = db.prepare(
      'UPDATE chunks SET refcount = refcount + ? WHERE id = ? AND stored_size > 0 AND EXISTS (SELECT 1 FROM owners WHERE chunk = ? AND tenant = ?)',
    );
    this.lower = db.prepare('UPDATE chunks SET refcount = MAX(refcount - ?, 0) WHERE id = ?');
    // The pieces of a delete are ranges of the staged ids, (after, last], lowered by two set statements.
    this.lastOfNext = db
      .prepare(
        `SELECT max(chunk) FROM (SELECT chunk FROM temp.${this.table} WHERE chunk > ? ORDER BY chunk LIMIT ?)`,
      )
      .pluck();
    this.underflowIn = db
      .prepare(
        `SELECT COALESCE(SUM(r.n - MIN(r.n, COALESCE(c.refcount, 0))), 0) FROM temp.${this.table} r LEFT JOIN chunks c ON c.id = r.chunk WHERE r.chunk > ? AND r.chunk <= ?`,
      )
      .pluck();
    this.lowerIn = db.prepare(
      `UPDATE chunks SET refcount = MAX(refcount - (SELECT r.n FROM temp.${this.table} r WHERE r.chunk = chunks.id), 0) WHERE id IN (SELECT chunk FROM temp.${this.table} WHERE chunk > ? AND chunk <= ?)`,
    );
  }

  /** Adds a batch of 36-byte manifest entries. */
  add(entries: Buffer): void {
    this.db.transaction(() => {
      for (let at = 0; at < entries.length; at += MANIFEST_ENTRY_BYTES)
        this.addStmt.run(entries.subarray(at, at + 32));
    })();
  }

  /** The next `limit` staged chunks after `after` (undefined: from the first), in id order. */
  private next(after: Buffer | undefined, limit: number): [Buffer, number][] {
    return (after === undefined ? this.firstStmt.all(limit) : this.nextStmt.all(after, limit)) as [
      Buffer,
      number,
    ][];
  }

  /**
   * Counts the references of the next `limit` staged chunks after `after`, in one transaction, each
   * re-checked to be still stored and owned by `tenant` (gc may have run since the commit's first check).
   * Returns the last chunk counted (undefined when none was left), or the ids failing the re-check; then
   * nothing of this piece was counted.
   */
  countNext(
    after: Buffer | undefined,
    limit: number,
    tenant: string,
  ): { last: Buffer | undefined; missing: string[] } {
    const rows = this.next(after, limit);
    const missing: string[] = [];
    const rollback = new Error('rollback');
    try {
      this.db.transaction(() => {
        for (const [id, n] of rows)
          if (this.bump.run(n, id, id, tenant).changes !== 1 && missing.length < 1000)
            missing.push(hexOf(id));
        if (missing.length > 0) throw rollback;
      })();
    } catch (err) {
      if (err !== rollback) throw err;
    }
    return { last: missing.length > 0 ? undefined : rows[rows.length - 1]?.[0], missing };
  }

  /**
   * A delete's counting: lowers the count of each of the next `limit` staged chunks after `after` by the
   * times the manifest names it, in one transaction. Returns the last chunk lowered (undefined when none was
   * left) and how many references had no count to lower (an index that was inconsistent before).
   */
  lowerNext(after: Buffer | undefined, limit: number): { last: Buffer | undefined; underflow: number } {
    const from = after ?? NO_CHUNK;
    const last = (this.lastOfNext.get(from, limit) as Buffer | undefined) ?? undefined;
    if (last === undefined) return { last: undefined, underflow: 0 };
    const underflow = this.db.transaction(() => {
      const missing = this.underflowIn.get(from, last) as number;
      this.lowerIn.run(from, last);
      return missing;
    })();
    return { last, underflow };
  }

  /** Takes back, in one transaction, what countNext counted for the next `limit` chunks after `after`. */
  uncountNext(after: Buffer | undefined, limit: number, upTo: Buffer): Buffer | undefined {
    const rows = this.next(after, limit).filter(([id]) => Buffer.compare(id, upTo) <= 0);
    this.db.transaction(() => {
      for (const [id, n] of rows) this.lower.run(n, id);
    })();
    return rows[rows.length - 1]?.[0];
  }

  drop(): void {
    if (this.dropped || !this.db.open) return;
    this.dropped = true;
    this.db.exec(`DROP TABLE IF EXISTS temp.${this.table}`);
  }
}

function configure(db: Database.Database): void {
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.pragma('busy_timeout = 5000');
  // 64 MiB of page cache: filterMissing's random lookups stay in memory for indexes of a few million chunks.
  db.pragma('cache_size = -65536');
  // Memory-mapped reads skip a pread() per page on cold lookups (the OS page cache serves them directly).
  db.pragma('mmap_size = 268435456');
}

/** The index holds every snapshot's name and every chunk's hash: for the server's user only. */
const DB_FILE_MODE = 0o600;

/**
 * An index written by a version that left it 0644 is made 0600, with its -wal and -shm. Best effort: a file
 * this user cannot change is still usable, and the server warns about its data folder's mode at start.
 */
function restrictDbFiles(path: string): void {
  for (const suffix of ['', '-wal', '-shm']) {
    try {
      chmodSync(`${path}${suffix}`, DB_FILE_MODE);
    } catch {
      // absent (no -wal yet) or not ours: nothing to do here
    }
  }
}

export function removeDbFiles(path: string): void {
  for (const suffix of ['', '-wal', '-shm', '-journal']) rmSync(`${path}${suffix}`, { force: true });
}

/** Replaces the index file at `target` by the one at `source` (both closed): rename is atomic. */
export function replaceDbFile(source: string, target: string): void {
  for (const suffix of ['-wal', '-shm', '-journal']) rmSync(`${target}${suffix}`, { force: true });
  renameSync(source, target);
}
