import type { StorageAdapter } from '../storage-adapters/adapter.js';
import { ChunkNameSet } from './chunk-names.js';
import { CHUNKS_PREFIX, type ChunkStore } from './chunk-store.js';
import type { IndexDb } from './index-db.js';
import type { TouchedSet } from './touched-set.js';
import type { GcHolder, GcReport, VerifyProgress } from './types.js';

/**
 * Chunks whose index rows gc has removed but whose objects it has not deleted yet. An upload of such a
 * chunk waits until the deletion is done and then stores it anew; otherwise the upload could land just
 * before the delete and be wiped out behind the index's back.
 */
export class DeletionsInFlight {
  private readonly pending = new Map<string, Promise<void>>();

  track(ids: string[]): () => void {
    let finish!: () => void;
    const done = new Promise<void>((resolve) => {
      finish = resolve;
    });
    for (const id of ids) this.pending.set(id, done);
    return () => {
      for (const id of ids) if (this.pending.get(id) === done) this.pending.delete(id);
      finish();
    };
  }

  /** Resolves when `id` is not being deleted (at once when it is not). */
  async settled(id: string): Promise<void> {
    for (let p = this.pending.get(id); p; p = this.pending.get(id)) await p;
  }

  has(id: string): boolean {
    return this.pending.has(id);
  }
}

/** The holder gc names for a chunk being written when it looks: counted as held, listed under no holder. */
const UPLOAD_IN_PROGRESS = 'upload in progress';
/** The holder gc names for a chunk of a snapshot being deleted, or whose delete stopped half way. */
const SNAPSHOT_BEING_DELETED = 'snapshot being deleted';

/** An open upload session as gc sees it: what it was told is present or uploaded. */
export interface GcSession {
  id: string;
  tenant: string;
  host: string;
  disk: string;
  expiresAt: number;
  /** Undefined for a session this process does not track (it holds only its base snapshot). */
  touched: TouchedSet | undefined;
}

export interface GcContext {
  index: IndexDb;
  chunks: ChunkStore;
  storage: StorageAdapter;
  deletions: DeletionsInFlight;
  /** True while a putChunk of `id` is between its decision to write the object and its index row. */
  uploading: (id: string) => boolean;
  /** Snapshots being deleted or whose delete stopped half way (repository.ts), and the chunks they name. */
  chunksOfPendingDeletes: () => Promise<{ snapshots: Set<string>; chunks: Set<string> }>;
  /** Those snapshots now. */
  pendingDeletes: () => string[];
  /** Open sessions (after expired ones were reaped). */
  sessions: () => GcSession[];
  now: () => number;
  graceMs: number;
  log: (m: string) => void;
  onProgress?: (p: VerifyProgress) => void;
}

/**
 * Deletes what no snapshot uses, in two phases: index rows first (one transaction, refcount re-checked),
 * then the objects. A crash between the phases leaves objects without rows, which the orphan sweep removes
 * on a later run; the reverse (rows without objects) cannot happen.
 *
 * An unreferenced chunk is kept while something may still need it, and only then:
 * - an upload is writing its object (replacing a damaged or missing copy);
 * - a snapshot being deleted names it, or one whose delete stopped after its row was removed (its manifest
 *   is adopted again at the next open);
 * - anyone touched it within the grace period (uploads, claims, "present" answers);
 * - an open upload session may name it in its commit: it uploaded it or was told it is present (the
 *   session's touched set), or it belongs to the session's base snapshot forgotten meanwhile (held_chunks);
 * - a snapshot lease holds a snapshot that names it and was forgotten meanwhile (held_chunks).
 * A session of one tenant never holds back another tenant's chunks. The report names each holder and how
 * many chunks it kept.
 */
export async function collectGarbage(ctx: GcContext): Promise<GcReport> {
  const started = ctx.now();
  const progress = ctx.onProgress ?? (() => {});
  progress({ phase: 'index', done: 0, total: 1 });
  // Read before everything else gc looks at: from the sessions on, phase one runs without a pause.
  const ofPendingDeletes = await ctx.chunksOfPendingDeletes();
  const sessions = ctx.sessions();
  const leases = ctx.index.listLeases();
  const cutoff = started - ctx.graceMs;
  // A delete that began while those manifests were read names chunks not among them: this run frees nothing.
  const lateDelete = ctx.pendingDeletes().some((id) => !ofPendingDeletes.snapshots.has(id));

  const heldBy = (id: Buffer): string[] => {
    // A chunk whose object is being written right now (an upload replacing a damaged or missing copy of an
    // indexed chunk) keeps its row: removed, its object would be deleted under the upload, which then
    // records a row for an object that is gone.
    const hex = id.toString('hex');
    const out: string[] = ctx.uploading(hex) ? [UPLOAD_IN_PROGRESS] : [];
    if (lateDelete || ofPendingDeletes.chunks.has(hex)) out.push(SNAPSHOT_BEING_DELETED);
    for (const s of sessions) {
      if (!s.touched) continue;
      if (s.touched.saturated ? ctx.index.ownedBy(id, s.tenant) : s.touched.has(id)) out.push(s.id);
    }
    return out;
  };
  const { ids, bytes, held, kept } = ctx.index.removeGarbage(cutoff, heldBy);
  const chunksProtected = ctx.index.countUnreferenced();
  progress({ phase: 'delete', done: 0, total: ids.length });
  const release = ctx.deletions.track(ids);
  try {
    for (let i = 0; i < ids.length; i += 1000) {
      await ctx.chunks.deleteMany(ids.slice(i, i + 1000));
      progress({ phase: 'delete', done: Math.min(ids.length, i + 1000), total: ids.length });
    }
  } finally {
    release();
  }

  // Orphans: objects the index does not know (a crash between gc's phases, an upload whose row was never
  // written, an index rebuilt from older storage). Only old ones: a fresh object may be an upload whose
  // row is about to be written. An encrypted repository's names do not show ids: a name is compared with
  // the names of the indexed chunks, and a candidate is opened to learn its id before the checks below.
  const orphanCutoff = started - ctx.graceMs;
  const codec = ctx.chunks.codec;
  const indexedNames = codec.encrypted
    ? new ChunkNameSet(
        (function* () {
          for (const row of ctx.index.iterateChunks())
            yield codec.chunkNameOfKey(codec.chunkKey(row.id)) ?? '';
        })(),
      )
    : undefined;
  let orphansDeleted = 0;
  let orphanBytes = 0;
  let batch: { key: string; id?: string; size: number }[] = [];
  const flush = async () => {
    const candidates: { key: string; id?: string; size: number }[] = [];
    for (const c of batch) {
      if (c.id) candidates.push(c);
      else {
        try {
          candidates.push({ ...c, id: (await ctx.chunks.identify(c.key)).id });
        } catch (err) {
          // Not a chunk this repository can open, under a name no indexed chunk has: nothing can use it.
          ctx.log(`gc: orphan object ${c.key} does not open (${(err as Error).message}); deleting it`);
          candidates.push(c);
        }
      }
    }
    // Re-checked right before deleting: the listing is a moment old.
    const doomed = candidates.filter(
      (c) => !c.id || (!ctx.index.hasChunk(c.id) && !ctx.deletions.has(c.id) && !ctx.uploading(c.id)),
    );
    const ids = doomed.flatMap((c) => (c.id ? [c.id] : []));
    const release = ctx.deletions.track(ids);
    try {
      await ctx.storage.deleteMany(doomed.map((c) => c.key));
    } finally {
      release();
    }
    for (const id of ids) ctx.chunks.forget(id);
    orphansDeleted += doomed.length;
    for (const c of doomed) orphanBytes += c.size;
    batch = [];
    progress({ phase: 'orphans', done: orphansDeleted, total: 0 });
  };
  for await (const e of ctx.storage.list(CHUNKS_PREFIX)) {
    const name = codec.chunkNameOfKey(e.key);
    if (!name || e.mtimeMs >= orphanCutoff) continue;
    const id = codec.chunkIdFromKey(e.key);
    if (id ? ctx.index.hasChunk(id) : indexedNames?.has(name)) continue;
    batch.push({ key: e.key, ...(id ? { id } : {}), size: e.size });
    if (batch.length >= 1000) await flush();
  }
  if (batch.length > 0) await flush();

  const holders: GcHolder[] = [
    ...sessions.map(
      (s): GcHolder => ({
        kind: 'session',
        id: s.id.slice(0, 8),
        tenant: s.tenant,
        host: s.host,
        disk: s.disk,
        expiresAt: new Date(s.expiresAt).toISOString(),
        chunks: kept.get(s.id) ?? 0,
      }),
    ),
    ...leases.map(
      (l): GcHolder => ({
        kind: 'lease',
        id: l.id.slice(0, 8),
        tenant: l.tenant,
        host: l.host,
        disk: l.disk,
        snapshot: l.snapshot,
        expiresAt: new Date(l.expires_at).toISOString(),
        chunks: kept.get(l.id) ?? 0,
      }),
    ),
  ].filter((h) => h.chunks > 0);
  const report: GcReport = {
    chunksDeleted: ids.length,
    bytesFreed: bytes + orphanBytes,
    orphansDeleted,
    chunksProtected,
    chunksHeld: held,
    openSessions: sessions.length,
    openLeases: leases.length,
    holders,
    seconds: (ctx.now() - started) / 1000,
  };
  const named = holders
    .slice(0, 5)
    .map(
      (h) =>
        `${h.kind} ${h.id} ${h.host}/${h.disk}${h.snapshot ? ` ${h.snapshot.slice(0, 12)}` : ''}: ${h.chunks}`,
    )
    .join(', ');
  ctx.log(
    `gc: ${report.chunksDeleted} chunks and ${orphansDeleted} orphans deleted, ${report.bytesFreed} bytes freed, ${chunksProtected} unreferenced chunks kept (${held} by ${holders.length} holders${named ? `: ${named}` : ''})`,
  );
  return report;
}
