import type { StorageAdapter } from '../storage-adapters/adapter.js';
import { CHUNKS_PREFIX, type ChunkStore } from './chunk-store.js';
import type { IndexDb } from './index-db.js';
import { describeMismatch, entryLengthMismatches } from './manifest-checks.js';
import { MANIFEST_ENTRY_BYTES } from './manifest-codec.js';
import type { ManifestStore } from './manifest-store.js';
import type { HealedChunk, VerifyProblem, VerifyProgress, VerifyReport } from './types.js';

export interface VerifyContext {
  index: IndexDb;
  chunks: ChunkStore;
  manifests: ManifestStore;
  storage: StorageAdapter;
  now: () => number;
  /** The chunker's maximum: no entry may be longer. */
  maxChunkBytes: number;
}

/** How many chunks verify reads at once with readData: enough to hide storage latency, bounded. */
const READ_CONCURRENCY = 4;

/**
 * Checks the repository; it changes nothing in storage and in the index only the damage records:
 * 1. every snapshot (in the index or in storage) has a readable manifest, trailer included;
 * 2. every chunk a manifest names is in the index and in the storage listing;
 * 3. with readData, every stored chunk is read back (cache bypassed) and re-hashed;
 * 4. every index refcount equals a recount from the indexed snapshots' manifests;
 * 5. copies a read found damaged earlier and no upload has replaced yet are reported as corrupt.
 * A stored copy found corrupt or absent is recorded as damaged, so the missing query reports the chunk and
 * the next backup that has it uploads it again. Damaged copies replaced since (or read good again) are
 * reported as healed, with the snapshots they make restorable again, and their records are dropped.
 * Each bad chunk is reported once, with every snapshot that names it (found by a second pass over the
 * manifests, only when there is something to report).
 */
export async function verifyRepository(
  ctx: VerifyContext,
  opts: { readData: boolean; onProgress?: (p: VerifyProgress) => void },
): Promise<VerifyReport> {
  const started = ctx.now();
  const progress = opts.onProgress ?? (() => {});

  // Storage keys, not ids: an encrypted repository's names are keyed hashes of the ids.
  const codec = ctx.chunks.codec;
  const stored = new Set<string>();
  for await (const e of ctx.storage.list(CHUNKS_PREFIX))
    if (codec.chunkNameOfKey(e.key) !== undefined) stored.add(e.key);

  const indexed = new Set(ctx.index.listSnapshots().map((s) => s.id));
  const snapshotIds = new Set(indexed);
  for await (const { id } of ctx.manifests.listIds()) snapshotIds.add(id);

  const recount = new Map<string, number>();
  const badManifests: VerifyReport['badManifests'] = [];
  const readable: string[] = [];
  // Entry lengths are compared with the length the index recorded from each chunk's verified upload.
  const lengths = new Map<string, number | undefined>();
  const realLength = (chunk: string) => {
    if (!lengths.has(chunk)) lengths.set(chunk, ctx.index.getChunk(chunk)?.raw_size);
    return lengths.get(chunk);
  };
  const maxLength = ctx.maxChunkBytes;
  let done = 0;
  for (const id of snapshotIds) {
    const counts = new Map<string, number>();
    let wrongLengths = 0;
    let firstWrong = '';
    try {
      let entry = 0;
      for await (const batch of ctx.manifests.entryBatches(id)) {
        for (let at = 0; at < batch.length; at += MANIFEST_ENTRY_BYTES) {
          const chunk = batch.toString('hex', at, at + 32);
          counts.set(chunk, (counts.get(chunk) ?? 0) + 1);
        }
        const wrong = entryLengthMismatches(batch, entry, maxLength, realLength);
        if (wrong.length > 0 && wrongLengths === 0) firstWrong = describeMismatch(wrong[0], maxLength);
        wrongLengths += wrong.length;
        entry += batch.length / MANIFEST_ENTRY_BYTES;
      }
      if (wrongLengths > 0)
        badManifests.push({
          snapshot: id,
          detail: `${wrongLengths} entries give a chunk a wrong length (the snapshot cannot be restored): ${firstWrong}`,
        });
      if (!indexed.has(id))
        badManifests.push({
          snapshot: id,
          detail: 'manifest in storage but not in the index (run reindex to adopt it)',
        });
      readable.push(id);
      // Only indexed snapshots count toward refcounts: the index only counts those.
      if (indexed.has(id)) for (const [c, n] of counts) recount.set(c, (recount.get(c) ?? 0) + n);
      else for (const c of counts.keys()) if (!recount.has(c)) recount.set(c, 0);
    } catch (err) {
      badManifests.push({ snapshot: id, detail: (err as Error).message });
    }
    progress({ phase: 'manifests', done: ++done, total: snapshotIds.size });
  }

  const bad = new Map<string, { kind: 'missing' | 'corrupt'; detail: string }>();
  for (const chunk of recount.keys()) {
    const row = ctx.index.getChunk(chunk);
    if (!stored.has(codec.chunkKey(chunk)))
      bad.set(chunk, { kind: 'missing', detail: 'absent from storage' });
    else if (!row) bad.set(chunk, { kind: 'missing', detail: 'absent from the index' });
  }

  let refcountMismatches = 0;
  for (const row of ctx.index.iterateChunks()) {
    if ((recount.get(row.id) ?? 0) !== row.refcount) refcountMismatches++;
  }
  for (const [chunk, n] of recount) if (n > 0 && !ctx.index.getChunk(chunk)) refcountMismatches++;

  let chunksChecked = 0;
  let bytesRead = 0;
  // Chunks (by id, not storage key) whose stored copy this run read back and found good.
  const readGood = new Set<string>();
  if (opts.readData) {
    // The chunk each key holds, where a keyed name hides it: every chunk a manifest or the index names.
    const idByKey = new Map<string, string>();
    if (codec.encrypted) {
      for (const chunk of recount.keys()) idByKey.set(codec.chunkKey(chunk), chunk);
      for (const row of ctx.index.iterateChunks()) idByKey.set(codec.chunkKey(row.id), row.id);
    }
    const queue = [...stored];
    const total = queue.length;
    const worker = async () => {
      for (let key = queue.pop(); key !== undefined; key = queue.pop()) {
        const known = codec.chunkIdFromKey(key) ?? idByKey.get(key);
        try {
          const { id, raw } = known
            ? { id: known, raw: await ctx.chunks.readRaw(known, { bypassCache: true, sealedAsIs: true }) }
            : await ctx.chunks.readRawByKey(key);
          bytesRead += raw.length;
          readGood.add(id);
        } catch (err) {
          const code = (err as { code?: string }).code;
          // An object no manifest or index row names is reported under its storage key.
          bad.set(known ?? key, {
            kind: code === 'NotFound' ? 'missing' : 'corrupt',
            detail: (err as Error).message,
          });
        }
        chunksChecked++;
        progress({ phase: 'chunks', done: chunksChecked, total });
      }
    };
    await Promise.all(Array.from({ length: READ_CONCURRENCY }, worker));
  } else {
    chunksChecked = recount.size;
  }

  const healed = new Map<string, { detail: string; foundAt: number; healedAt: number | null }>();
  for (const d of ctx.index.damageRecords()) {
    if (bad.has(d.chunk)) continue;
    // Read good in this run, from the copy under its storage key (the set holds ids, never keys).
    if (d.healedAt !== null || readGood.has(d.chunk)) healed.set(d.chunk, d);
    else if (ctx.index.getChunk(d.chunk))
      bad.set(d.chunk, { kind: 'corrupt', detail: `a read found its stored copy damaged: ${d.detail}` });
  }
  for (const chunk of healed.keys()) ctx.index.forgetDamage(chunk);
  for (const [chunk, p] of bad) {
    const row = ctx.index.getChunk(chunk);
    if (row && row.stored_size > 0 && !ctx.index.isDamaged(chunk))
      ctx.index.markDamaged(chunk, p.detail, ctx.now());
  }

  const users = new Map<string, Set<string>>(
    [...bad.keys(), ...healed.keys()].map((c) => [c, new Set<string>()]),
  );
  if (users.size > 0) {
    for (const id of readable) {
      for await (const batch of ctx.manifests.entryBatches(id)) {
        for (let at = 0; at < batch.length; at += MANIFEST_ENTRY_BYTES)
          users.get(batch.toString('hex', at, at + 32))?.add(id);
      }
    }
  }
  const problems: VerifyProblem[] = [...bad].map(([chunk, p]) => ({
    chunk,
    kind: p.kind,
    snapshots: [...(users.get(chunk) ?? [])].sort(),
    detail: p.detail,
  }));
  problems.sort((a, b) => (a.chunk < b.chunk ? -1 : 1));
  const iso = (ms: number) => new Date(ms).toISOString();
  const healedChunks: HealedChunk[] = [...healed].map(([chunk, h]) => ({
    chunk,
    snapshots: [...(users.get(chunk) ?? [])].sort(),
    detail: h.detail,
    foundAt: iso(h.foundAt),
    healedAt: h.healedAt === null ? null : iso(h.healedAt),
  }));
  healedChunks.sort((a, b) => (a.chunk < b.chunk ? -1 : 1));
  const stillBad = new Set(problems.flatMap((p) => p.snapshots));
  for (const m of badManifests) stillBad.add(m.snapshot);
  const healedSnapshots = [...new Set(healedChunks.flatMap((h) => h.snapshots))]
    .filter((id) => !stillBad.has(id))
    .sort();

  return {
    ok: problems.length === 0 && badManifests.length === 0 && refcountMismatches === 0,
    snapshotsChecked: snapshotIds.size,
    chunksChecked,
    bytesRead,
    problems,
    badManifests,
    refcountMismatches,
    healed: healedChunks,
    healedSnapshots,
    seconds: (ctx.now() - started) / 1000,
  };
}
