import type { StorageAdapter } from '../storage-adapters/adapter.js';
import { ChunkNameSet } from './chunk-names.js';
import { CHUNKS_PREFIX, type ChunkStore } from './chunk-store.js';
import type { IndexDb } from './index-db.js';
import { chunkNameFromKey } from './stored-objects.js';
import type { GcReport } from './types.js';

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

export interface GcContext {
  index: IndexDb;
  chunks: ChunkStore;
  storage: StorageAdapter;
  deletions: DeletionsInFlight;
  /** True while a putChunk of `id` is between its storage write and its index row. */
  uploading: (id: string) => boolean;
  now: () => number;
  graceMs: number;
  log: (m: string) => void;
}

/**
 * Deletes what no snapshot uses, in two phases: index rows first (one transaction, refcount re-checked),
 * then the objects. A crash between the phases leaves objects without rows, which the orphan sweep removes
 * on a later run; the reverse (rows without objects) cannot happen.
 *
 * The cutoff protects uploads of sessions still in progress: a chunk is only collected when nobody touched
 * it since min(now - grace, start of the oldest open session). Every putChunk and every "present" answer
 * of filterMissing touches the chunk, so a session never relies on a chunk gc is free to delete.
 */
export async function collectGarbage(ctx: GcContext): Promise<GcReport> {
  const started = ctx.now();
  const reaped = ctx.index.reapExpiredSessions(started);
  if (reaped > 0) ctx.log(`gc: ${reaped} expired sessions closed`);
  const oldestSession = ctx.index.oldestSessionStart();
  const cutoff = Math.min(started - ctx.graceMs, oldestSession ?? Number.POSITIVE_INFINITY);

  const { ids, bytes } = ctx.index.removeGarbage(cutoff);
  const chunksProtected = ctx.index.countUnreferenced();
  const release = ctx.deletions.track(ids);
  try {
    await ctx.chunks.deleteMany(ids);
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
          for (const row of ctx.index.iterateChunks()) yield chunkNameFromKey(codec.chunkKey(row.id)) ?? '';
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
  };
  for await (const e of ctx.storage.list(CHUNKS_PREFIX)) {
    const name = chunkNameFromKey(e.key);
    if (!name || e.mtimeMs >= orphanCutoff) continue;
    const id = codec.chunkIdFromKey(e.key);
    if (id ? ctx.index.hasChunk(id) : indexedNames?.has(name)) continue;
    batch.push({ key: e.key, ...(id ? { id } : {}), size: e.size });
    if (batch.length >= 1000) await flush();
  }
  if (batch.length > 0) await flush();

  const report: GcReport = {
    chunksDeleted: ids.length,
    bytesFreed: bytes + orphanBytes,
    orphansDeleted,
    chunksProtected,
    seconds: (ctx.now() - started) / 1000,
  };
  ctx.log(
    `gc: ${report.chunksDeleted} chunks and ${orphansDeleted} orphans deleted, ${report.bytesFreed} bytes freed, ${chunksProtected} unreferenced chunks kept`,
  );
  return report;
}
