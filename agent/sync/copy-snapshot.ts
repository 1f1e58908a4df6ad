import { setTimeout as sleep } from 'node:timers/promises';
import { MAX_MISSING_IDS, type SnapshotInfo } from '../../api/protocol.js';
import { DiskvaultError, InvalidInputError } from '../../common/errors.js';
import {
  ID_BYTES,
  MANIFEST_ENTRY_BYTES,
  type ManifestHeader,
  ManifestReader,
  ManifestWriter,
} from '../../repo-engine/manifest-codec.js';
import type { DiskvaultClient } from '../client.js';
import type { ChunkCopier, ChunkRef } from './chunk-copier.js';

export interface SnapshotCopyResult {
  /** 'present': an earlier, interrupted run had committed it already (the commit found the id taken). */
  outcome: 'copied' | 'present';
  chunks: number;
  chunksCopied: number;
  /** Entries the destination held already (each counted once per missing query it was asked in). */
  chunksPresent: number;
  bytesCopied: number;
  rawBytesCopied: number;
}

export interface CopyProgress {
  /** Logical bytes of the snapshot dealt with (held already, or copied). */
  doneBytes: number;
  chunksCopied: number;
  bytesCopied: number;
}

/**
 * A commit that found chunks gone (gc on the destination between upload and commit), or its id taken by a
 * snapshot it cannot see, tries this often.
 */
const COMMIT_ATTEMPTS = 3;
/** Wait before committing again after finding the id taken, times the attempt: another sync's commit ends. */
const TAKEN_RETRY_MS = 1000;

/**
 * Whether the destination shows this token snapshot `snap` as copied: the same id, host, disk, size, chunk
 * count and image hash (an end-to-end snapshot has none there, as at the source).
 */
async function sameSnapshotAt(destination: DiskvaultClient, snap: SnapshotInfo): Promise<boolean> {
  try {
    const there = await destination.getSnapshot(snap.id);
    return (
      there.host === snap.host &&
      there.disk === snap.disk &&
      there.size === snap.size &&
      there.chunkCount === snap.chunkCount &&
      there.sha256 === snap.sha256
    );
  } catch (err) {
    if (err instanceof DiskvaultError && err.code === 'NotFound') return false;
    throw err;
  }
}

/**
 * Copies one snapshot: its manifest from the source (trailer hash checked), the chunks the destination's
 * tenant lacks (asked in batches, each batch's answer copied before the next is asked, so an id repeated
 * later in the image is already held when it comes up again), then one commit keeping the snapshot's id,
 * time, host, disk, tags, image hash and unreadable ranges. Nothing is committed unless every chunk is
 * stored: the destination refuses a manifest naming a chunk it lacks.
 */
export async function copySnapshot(opts: {
  source: DiskvaultClient;
  destination: DiskvaultClient;
  copier: ChunkCopier;
  snapshot: SnapshotInfo;
  /** The destination tenant to copy into; undefined for the destination token's own. */
  tenant: string | undefined;
  onProgress: (p: CopyProgress) => void;
}): Promise<SnapshotCopyResult> {
  const { source, destination, copier, snapshot: snap } = opts;
  const { header, entries } = await readManifest(source, snap);
  // An end-to-end snapshot is copied sealed, into a session of its key (opened by key id: an admin's).
  const session = await destination.createSession(
    snap.host,
    snap.disk,
    opts.tenant,
    snap.e2e ? { keyId: snap.e2e.keyId } : undefined,
  );
  const result: SnapshotCopyResult = {
    outcome: 'copied',
    chunks: header.chunkCount,
    chunksCopied: 0,
    chunksPresent: 0,
    bytesCopied: 0,
    rawBytesCopied: 0,
  };
  const progress: CopyProgress = { doneBytes: 0, chunksCopied: 0, bytesCopied: 0 };
  const copied = (c: ChunkRef, done: { sent: number; raw: number }) => {
    result.chunksCopied++;
    result.bytesCopied += done.sent;
    result.rawBytesCopied += done.raw;
    progress.doneBytes += c.length;
    progress.chunksCopied = result.chunksCopied;
    progress.bytesCopied = result.bytesCopied;
    opts.onProgress(progress);
  };
  try {
    const c = header.chunker;
    const d = session.chunker;
    if (c.min !== d.min || c.avg !== d.avg || c.max !== d.max)
      throw new InvalidInputError(
        `snapshot ${snap.id} was cut with chunker ${JSON.stringify(c)}, the destination repository cuts ${JSON.stringify(d)}: a copy needs a destination created with the source's --chunk-avg`,
      );
    for (let from = 0; from < entries.length; from += MAX_MISSING_IDS * MANIFEST_ENTRY_BYTES) {
      const slice = entries.subarray(
        from,
        Math.min(entries.length, from + MAX_MISSING_IDS * MANIFEST_ENTRY_BYTES),
      );
      const ids = Buffer.allocUnsafe((slice.length / MANIFEST_ENTRY_BYTES) * ID_BYTES);
      const lengths = new Map<string, number>();
      let logical = 0;
      for (let at = 0, i = 0; at < slice.length; at += MANIFEST_ENTRY_BYTES, i += ID_BYTES) {
        slice.copy(ids, i, at, at + ID_BYTES);
        const length = slice.readUInt32BE(at + ID_BYTES);
        lengths.set(slice.toString('hex', at, at + ID_BYTES), length);
        logical += length;
      }
      const missing = await destination.missingBinary(session.id, ids);
      const wanted: ChunkRef[] = [];
      for (let at = 0; at < missing.length; at += ID_BYTES) {
        const id = missing.toString('hex', at, at + ID_BYTES);
        const length = lengths.get(id);
        if (length === undefined)
          throw new DiskvaultError(
            'Corrupt',
            `the destination asked for chunk ${id}, which was not in the query`,
          );
        wanted.push({ id, length });
      }
      result.chunksPresent += slice.length / MANIFEST_ENTRY_BYTES - wanted.length;
      progress.doneBytes += logical - wanted.reduce((n, w) => n + w.length, 0);
      opts.onProgress(progress);
      await copier.copy(session.id, wanted, copied);
    }
    const body = encodeCopy(header, entries);
    for (let attempt = 1; ; attempt++) {
      try {
        await destination.commit(session.id, body, { snapshotId: snap.id });
        return result;
      } catch (err) {
        if (!(err instanceof DiskvaultError) || err.code !== 'Conflict') throw err;
        if (err.details?.snapshot === snap.id) {
          // Taken: by a run cut off before it saw its commit's answer, or by this run's own commit whose
          // answer was lost and whose retry met it; then the destination shows this token the snapshot,
          // whole. Or by another sync committing it right now (whose commit may yet fail), or by a
          // snapshot of another tenant under the same id: then nothing is copied for this token yet.
          if (await sameSnapshotAt(destination, snap)) {
            if (result.chunksCopied === 0) result.outcome = 'present';
            return result;
          }
          if (attempt >= COMMIT_ATTEMPTS)
            throw new DiskvaultError(
              'Conflict',
              `snapshot ${snap.id} is taken at the destination by a snapshot this token cannot see: another tenant's under the same id, or one another sync is still committing`,
              { snapshot: snap.id },
            );
          await sleep(TAKEN_RETRY_MS * attempt);
          continue;
        }
        const gone = err.details?.missing;
        if (!Array.isArray(gone) || attempt >= COMMIT_ATTEMPTS) throw err;
        const refs = refsOf(entries, new Set(gone as string[]));
        await copier.copy(session.id, refs, copied);
      }
    }
  } catch (err) {
    await destination.abort(session.id).catch(() => {});
    throw err;
  }
}

/** The whole manifest, checked: the trailer hash, and that it describes the snapshot the listing named. */
async function readManifest(
  source: DiskvaultClient,
  snap: SnapshotInfo,
): Promise<{ header: ManifestHeader; entries: Buffer }> {
  // Read as stored data: damage is Corrupt (this snapshot fails), not a refused request (the run stops).
  const reader = await ManifestReader.open(await source.getManifest(snap.id), 'storage');
  const batches: Buffer[] = [];
  for await (const b of reader.entryBatches()) batches.push(b);
  const h = reader.header;
  const same =
    h.host === snap.host &&
    h.disk === snap.disk &&
    Date.parse(h.time) === Date.parse(snap.time) &&
    h.sha256 === snap.sha256 &&
    h.size === snap.size &&
    h.chunkCount === snap.chunkCount;
  if (!same)
    throw new DiskvaultError(
      'Corrupt',
      `the manifest of snapshot ${snap.id} does not match its listing on the source`,
      {
        snapshot: snap.id,
      },
    );
  return { header: h, entries: batches.length === 1 ? (batches[0] as Buffer) : Buffer.concat(batches) };
}

/**
 * The commit body: the source's header as it is (every field, including any this build does not know)
 * except the id and tenant, which the destination sets, and the same entries.
 */
function encodeCopy(source: ManifestHeader, entries: Buffer): Buffer {
  const { id: _id, tenant: _tenant, ...header } = source;
  const w = new ManifestWriter(header);
  return Buffer.concat([w.head(), w.entries(entries), w.trailer()]);
}

function refsOf(entries: Buffer, ids: Set<string>): ChunkRef[] {
  const refs: ChunkRef[] = [];
  for (let at = 0; at < entries.length && ids.size > 0; at += MANIFEST_ENTRY_BYTES) {
    const id = entries.toString('hex', at, at + ID_BYTES);
    if (!ids.delete(id)) continue;
    refs.push({ id, length: entries.readUInt32BE(at + ID_BYTES) });
  }
  return refs;
}
