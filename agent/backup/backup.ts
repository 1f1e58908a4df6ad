import { createHash } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { compress } from 'zstd-napi';
import zstdBinding from 'zstd-napi/binding.js';
import { MAX_MISSING_IDS, type SnapshotInfo } from '../../api/protocol.js';
import { DiskvaultError, InvalidInputError, isDiskvaultError } from '../../common/errors.js';
import { compressionWorthwhile } from '../../common/limits.js';
import { checkName, TAG_PATTERN } from '../../common/names.js';
import { BufferRecycler } from '../../repo-engine/buffer-recycler.js';
import {
  type ChunkerParams,
  MANIFEST_ENTRY_BYTES,
  MANIFEST_FORMAT_VERSION,
  type ManifestHeader,
} from '../../repo-engine/manifest-codec.js';
import type { DiskvaultClient } from '../client.js';
import { e2eChunkId, SEALED_CHUNK_OVERHEAD, sealChunk } from '../e2e/chunk-sealing.js';
import type { E2eKeys } from '../e2e/e2e-keys.js';
import { sealedHeader, workerKeys } from '../e2e/snapshot-key.js';
import type { ImageSource } from '../source.js';
import { IdSet } from './id-set.js';
import { ManifestSpool } from './manifest-spool.js';
import { PreviousManifest } from './previous-manifest.js';
import { mergeRanges, readResilient, UnreadableBudget } from './resilient-read.js';
import { Semaphore } from './semaphore.js';
import { WorkerPool } from './worker-pool.js';

/** How often the live counters are reported between window boundaries. */
const PROGRESS_TICK_MS = 250;
/** What runBackup needs: the source, where it goes, and its tunables. */
export interface BackupOptions {
  client: DiskvaultClient;
  source: ImageSource;
  host: string;
  disk: string;
  tags?: string[];
  /** ISO 8601 time the snapshot represents; default: when the backup started. */
  time?: string;
  /** Chunk uploads in flight. Default: the client's concurrency. */
  concurrency?: number;
  /** Threads cutting, hashing and compressing. Default: the number of CPUs. */
  workers?: number;
  /** Bytes read per window. Default 16 MiB. */
  windowBytes?: number;
  /** Windows held at once (one read/cut, one hashed, one uploading). Default 3: more only costs memory (measured). */
  windowsInFlight?: number;
  /** zstd level for uploads. Default 1. */
  compressionLevel?: number;
  /** Commits tried when the server names chunks it lacks. Default 4. */
  commitAttempts?: number;
  /** Unreadable bytes accepted before the backup stops and commits nothing (see UnreadableBudget). Default: no limit. */
  maxUnreadable?: { bytes: number; asGiven: string };
  /** An end-to-end backup's key: chunks are keyed and sealed, the image's hash sealed in the manifest. */
  e2e?: E2eKeys;
  onProgress?: (p: BackupProgress) => void;
}

export interface BackupProgress {
  phase: 'reading' | 'committing';
  bytesRead: number;
  /** Image size, null for a pipe. */
  total: number | null;
  chunks: number;
  newChunks: number;
  /** Raw bytes of chunks the repository lacked. */
  newBytes: number;
  /** Raw bytes of chunks it already had (or this run already sent). */
  knownBytes: number;
  /** Bytes sent on the wire for chunks (after compression). */
  bytesUploaded: number;
}

export interface BackupSummary {
  snapshot: SnapshotInfo;
  size: number;
  sha256: string;
  chunks: number;
  newChunks: number;
  newBytes: number;
  bytesUploaded: number;
  seconds: number;
  unreadable: [number, number][];
  /** Share of the image's bytes the repository already held, 0..1. */
  dedupRatio: number;
  /** Image bytes cut by checking the previous snapshot's chunks instead of running fastcdc. */
  reusedBytes: number;
  /** Image bytes per second. */
  throughput: number;
  sourceFormat: string;
}

interface Window {
  index: number;
  slot: number;
  /** Image offset of the window's fresh bytes, which sit at slot position `pad`. */
  offset: number;
  bytes: number;
  eof: boolean;
  /** Things still using the slot: image hash, chunk processing, the carry the next window copies. */
  holds: number;
}

const MiB = 1024 * 1024;

/**
 * One backup, from an open ImageSource to a committed snapshot.
 *
 * The image is read front to back into a fixed ring of windows (SharedArrayBuffers, so worker threads see
 * them without copies). Each window is, in order: hashed into the whole-image SHA-256 (a dedicated thread),
 * cut (the cut of one window needs the previous window's carry, so cuts form a chain; where the disk is
 * unchanged since the previous snapshot the cut is proven by hashing last night's chunks instead of running
 * fastcdc, see window-cutter.ts), then its chunks not hashed by the cut are hashed, filtered against what
 * the repository already holds, and the missing ones compressed and uploaded, while later windows are
 * already being read and cut. A window's slot is reused only when all of that is done, so memory is
 * windows x window size whatever the disk size.
 */
export async function runBackup(o: BackupOptions): Promise<BackupSummary> {
  const started = performance.now();
  const time = o.time ?? new Date().toISOString();
  const tags = o.tags ?? [];
  checkNames(o.host, o.disk, tags, time);
  const { client, source } = o;

  const session = await client.createSession(
    o.host,
    o.disk,
    undefined,
    o.e2e ? { proof: o.e2e.proof.toString('base64') } : undefined,
  );
  const chunker = session.chunker;
  const pad = chunker.max;
  const windowBytes = Math.max(o.windowBytes ?? 16 * MiB, chunker.max);
  const slotCount = Math.max(3, o.windowsInFlight ?? 3);
  const level = o.compressionLevel ?? 1;
  const uploads = new Semaphore(Math.max(1, o.concurrency ?? client.concurrency));
  // Compressed groups are written into buffers that go round (worker, uploads, back here) rather than
  // fresh ones per chunk: fresh megabytes page-fault on first touch and are unmapped again when collected.
  const compressedBuffers = new BufferRecycler(64 * MiB, 4 * MiB);

  const sabs = Array.from({ length: slotCount }, () => new SharedArrayBuffer(pad + windowBytes));
  const slotBufs = sabs.map((s) => Buffer.from(s));
  const freeSlots = Array.from({ length: slotCount }, (_, i) => i);
  const slotGate = new Semaphore(slotCount);
  let pool: WorkerPool | null = null;
  let hasher: WorkerPool | null = null;
  let spool: ManifestSpool | null = null;

  const progress: BackupProgress = {
    phase: 'reading',
    bytesRead: 0,
    total: source.size,
    chunks: 0,
    newChunks: 0,
    newBytes: 0,
    knownBytes: 0,
    bytesUploaded: 0,
  };
  const report = () => o.onProgress?.({ ...progress });
  // The pipeline reports at window boundaries; a source that stalls (a slow pipe, a disk retrying bad
  // sectors) would freeze the figures meanwhile, uploads included, so a ticker reports the live counters too.
  const ticker = o.onProgress ? setInterval(report, PROGRESS_TICK_MS) : undefined;
  ticker?.unref();
  let unreadable: [number, number][] = [];
  let reusedBytes = 0;
  const budget = o.maxUnreadable
    ? new UnreadableBudget(o.maxUnreadable.bytes, o.maxUnreadable.asGiven)
    : undefined;

  try {
    spool = await ManifestSpool.create();
    const workers = Math.max(1, o.workers ?? availableParallelism());
    pool = new WorkerPool(workers, {
      slots: sabs,
      chunker,
      warmBytes: pad + windowBytes,
      ...(o.e2e ? { e2e: workerKeys(o.e2e) } : {}),
    });
    hasher = new WorkerPool(1, { slots: sabs, chunker, warmBytes: 0 });
    const known = new IdSet(4096);
    const sentThisRun = new IdSet(4096);
    // The previous snapshot's chunks are almost all still there: learn them while the first window is read.
    const previousLoad = session.previous
      ? PreviousManifest.download(client, session.previous.id, known)
      : Promise.resolve(null);
    const seeded = previousLoad.then(() => {});
    seeded.catch(() => {});

    let firstError: unknown = null;
    const inFlight = new Set<Promise<void>>();
    let spoolChain: Promise<void> = Promise.resolve();

    const release = (w: Window) => {
      if (--w.holds === 0) {
        freeSlots.push(w.slot);
        slotGate.release();
      }
    };

    const readWindow = async (index: number, offset: number): Promise<Window> => {
      await slotGate.acquire();
      const slot = freeSlots.pop()!;
      try {
        const want = source.size === null ? windowBytes : Math.min(windowBytes, source.size - offset);
        const view = slotBufs[slot].subarray(pad, pad + want);
        const got =
          want > 0 ? await readResilient(source, view, offset, { budget }) : { bytes: 0, unreadable: [] };
        if (got.unreadable.length > 0) unreadable.push(...got.unreadable);
        const eof = got.bytes < windowBytes || (source.size !== null && offset + got.bytes >= source.size);
        return { index, slot, offset, bytes: got.bytes, eof, holds: 0 };
      } catch (err) {
        freeSlots.push(slot);
        slotGate.release();
        throw err;
      }
    };

    /** Hash the window's chunks, record them in the manifest, upload what the server lacks. */
    const processChunks = async (
      w: Window,
      from: number,
      cut: { ends: Uint32Array; ids: Uint8Array; hashed: Uint8Array },
      appendAfter: Promise<void>,
      appended: () => void,
    ) => {
      const { ends, ids } = cut;
      let entries: Buffer;
      try {
        if (cut.hashed.includes(0)) {
          const hashed = await pool!.run({ type: 'hash', slot: w.slot, from, ends, skip: cut.hashed });
          for (let i = 0; i < ends.length; i++)
            if (!cut.hashed[i]) ids.set(hashed.ids.subarray(i * 32, i * 32 + 32), i * 32);
        }
        entries = Buffer.alloc(ends.length * MANIFEST_ENTRY_BYTES);
        let start = from;
        for (let i = 0; i < ends.length; i++) {
          entries.set(ids.subarray(i * 32, i * 32 + 32), i * MANIFEST_ENTRY_BYTES);
          entries.writeUInt32BE(ends[i] - start, i * MANIFEST_ENTRY_BYTES + 32);
          start = ends[i];
        }
        // The manifest lists chunks in image order, whatever order windows finish hashing in.
        await appendAfter;
        await spool!.append(entries);
      } finally {
        appended();
      }
      await seeded;
      const candidates: number[] = [];
      let start = from;
      const starts = new Uint32Array(ends.length);
      for (let i = 0; i < ends.length; i++) {
        starts[i] = start;
        const len = ends[i] - start;
        start = ends[i];
        progress.chunks++;
        if (known.has(ids, i * 32) || !sentThisRun.add(ids, i * 32)) {
          progress.knownBytes += len;
          continue;
        }
        // Claimed for this window now, before any await, so no later window uploads the same chunk again.
        candidates.push(i);
      }
      if (candidates.length === 0) return;
      // Asked in binary: no hex strings for ids that are, on a later night, nearly all known.
      const query = Buffer.allocUnsafe(candidates.length * 32);
      candidates.forEach((i, k) => {
        query.set(ids.subarray(i * 32, i * 32 + 32), k * 32);
      });
      const missing = new IdSet(Math.max(16, candidates.length));
      for (let at = 0; at < query.length; at += MAX_MISSING_IDS * 32) {
        const answer = await client.missingBinary(session.id, query.subarray(at, at + MAX_MISSING_IDS * 32));
        for (let k = 0; k < answer.length; k += 32) missing.add(answer, k);
      }
      const toSend: number[] = [];
      for (const i of candidates) {
        if (missing.has(ids, i * 32)) toSend.push(i);
        else progress.knownBytes += ends[i] - starts[i];
      }
      // Compress in groups of ~8 MiB so uploads start before the whole window is compressed.
      const groups: number[][] = [];
      let group: number[] = [];
      let groupBytes = 0;
      for (const i of toSend) {
        group.push(i);
        groupBytes += ends[i] - starts[i];
        if (groupBytes >= 8 * MiB) {
          groups.push(group);
          group = [];
          groupBytes = 0;
        }
      }
      if (group.length > 0) groups.push(group);
      await Promise.all(
        groups.map(async (g) => {
          const ranges = new Uint32Array(g.length * 2);
          let room = 0;
          g.forEach((i, k) => {
            ranges[k * 2] = starts[i];
            ranges[k * 2 + 1] = ends[i];
            room += zstdBinding.compressBound(ends[i] - starts[i]) + (o.e2e ? SEALED_CHUNK_OVERHEAD : 0);
          });
          const out = compressedBuffers.take(room);
          const packed = await pool!.run({ type: 'compress', slot: w.slot, ranges, level, out }, [out]);
          // Given back only once every upload of the group has finished with it: after a failure, uploads of
          // the group may still be sending from it.
          await Promise.all(
            g.map((i, k) =>
              uploads.use(async () => {
                // Once one upload has failed for good the backup is lost: chunks still queued behind it must not
                // each spend their own retry budget before the failure is reported.
                if (firstError) return;
                // An incompressible chunk is sent straight from the window: the slot is held until it is sent.
                const payload = packed.compressed[k]
                  ? Buffer.from(packed.out, packed.offsets[k], packed.offsets[k + 1] - packed.offsets[k])
                  : slotBufs[w.slot].subarray(starts[i], ends[i]);
                const id = Buffer.from(ids.buffer, ids.byteOffset + i * 32, 32).toString('hex');
                await client.putChunk(
                  session.id,
                  id,
                  payload,
                  o.e2e ? 'sealed' : packed.compressed[k] ? 'zstd' : 'raw',
                );
                progress.newChunks++;
                progress.newBytes += ends[i] - starts[i];
                progress.bytesUploaded += payload.length;
              }),
            ),
          );
          compressedBuffers.give(packed.out);
        }),
      );
    };

    let next = readWindow(0, 0);
    // The fast path needs the whole chunk map before the first cut; a failed download only costs speed here
    // (processChunks still reports it through `seeded`).
    const loaded = await previousLoad.catch(() => null);
    const previous = loaded && sameChunker(loaded.chunker, chunker) ? loaded : null;
    /**
     * Starts the cut of window `w` from image offset `cutStart` (a true chunk boundary at or before the
     * window's fresh bytes), the carry [cutStart, w.offset) having been copied in front of them.
     */
    const startCut = (w: Window, cutStart: number) => {
      const from = pad - (w.offset - cutStart);
      const to = pad + w.bytes;
      const result = pool!.run({
        type: 'cut',
        slot: w.slot,
        from,
        to,
        final: w.eof,
        imageOffset: cutStart,
        imageSize: source.size,
        previous: previous?.slice(cutStart, cutStart + (to - from)) ?? null,
      });
      result.catch(() => {});
      return { cutStart, from, result };
    };
    /** Copies the carry [cutStart, end of `before`) from `before`'s slot in front of `w`'s fresh bytes. */
    const copyCarry = (before: Window, w: Window, cutStart: number) => {
      const carry = w.offset - cutStart;
      slotBufs[before.slot].copy(
        slotBufs[w.slot],
        pad - carry,
        pad + (cutStart - before.offset),
        pad + before.bytes,
      );
    };

    /** The read of the window after `w` starts once `w` is in hand, and only once. */
    let readAfter = -1;
    const readAhead = (w: Window) => {
      if (w.eof || readAfter === w.index) return;
      readAfter = w.index;
      next = readWindow(w.index + 1, w.offset + w.bytes);
      next.catch(() => {});
    };
    // Cuts form a chain (each needs the carry the previous one leaves), so one runs at a time. Where last
    // night's chunk map predicts the carry, the next window's cut starts at once from that guess, on another
    // thread, and is kept only if the real carry matches; otherwise it is cut again from the real one. An
    // unchanged disk so keeps two threads proving chunks instead of one.
    let current = await next;
    let cut = startCut(current, current.offset);
    for (;;) {
      // A const per window: the callbacks below settle after the loop has moved on to the next one.
      const w = current;
      progress.bytesRead += w.bytes;
      readAhead(w);
      w.holds = w.eof ? 2 : 3; // image hash + chunk processing (+ the carry the next window copies)
      const hashing = hasher.run({ type: 'image-update', slot: w.slot, from: pad, to: pad + w.bytes });
      track(
        hashing.then(() => release(w)),
        inFlight,
        (e) => (firstError ??= e),
      );
      let following: Window | null = null;
      let guess: ReturnType<typeof startCut> | null = null;
      const predicted = w.eof ? null : (previous?.carryStartAt(w.offset + w.bytes) ?? null);
      if (predicted !== null && w.offset + w.bytes - predicted <= pad) {
        following = await next;
        readAhead(following);
        copyCarry(w, following, predicted);
        guess = startCut(following, predicted);
      }
      const done = await cut.result;
      reusedBytes += done.reusedBytes;
      const appendAfter = spoolChain;
      let appended!: () => void;
      spoolChain = new Promise<void>((r) => {
        appended = r;
      });
      track(
        processChunks(w, cut.from, done, appendAfter, appended).finally(() => release(w)),
        inFlight,
        (e) => (firstError ??= e),
      );
      report();
      if (firstError) throw firstError;
      if (w.eof) break;
      following ??= await next;
      const carryStart = w.offset + (done.carryFrom - pad);
      if (guess && guess.cutStart === carryStart) cut = guess;
      else {
        // The guessed cut still reads the slot: let it finish before the carry in front is rewritten.
        if (guess) await guess.result.catch(() => {});
        copyCarry(w, following, carryStart);
        cut = startCut(following, carryStart);
      }
      release(w);
      current = following;
    }
    await Promise.all([...inFlight]);
    if (firstError) throw firstError;
    await seeded;

    const sha256 = (await hasher.run({ type: 'image-digest' })).sha256;
    unreadable = mergeRanges(unreadable);
    const header: ManifestHeader = sealedHeader(o.e2e, {
      formatVersion: MANIFEST_FORMAT_VERSION,
      host: o.host,
      disk: o.disk,
      time,
      size: progress.bytesRead,
      sha256,
      chunker,
      tags,
      unreadable,
      sourceFormat: source.format,
      chunkCount: spool.chunkCount,
    });
    progress.phase = 'committing';
    report();
    const snapshot = await commitWithRepair(
      o,
      session.id,
      header,
      spool,
      level,
      progress,
      o.commitAttempts ?? 4,
    );
    const seconds = (performance.now() - started) / 1000;
    return {
      snapshot,
      size: header.size,
      sha256,
      chunks: progress.chunks,
      newChunks: progress.newChunks,
      newBytes: progress.newBytes,
      bytesUploaded: progress.bytesUploaded,
      seconds,
      unreadable,
      dedupRatio: header.size === 0 ? 1 : 1 - progress.newBytes / header.size,
      reusedBytes,
      throughput: seconds > 0 ? header.size / seconds : 0,
      sourceFormat: source.format,
    };
  } catch (err) {
    // Leave nothing half-open on the server; a rerun uploads only what it still lacks.
    await client.abort(session.id).catch(() => {});
    throw err;
  } finally {
    clearInterval(ticker);
    await Promise.all([pool?.close(), hasher?.close(), spool?.close()]);
  }
}

function sameChunker(a: ChunkerParams, b: ChunkerParams): boolean {
  return a.min === b.min && a.avg === b.avg && a.max === b.max;
}

function track(p: Promise<void>, set: Set<Promise<void>>, onError: (e: unknown) => void): void {
  const tracked = p.catch(onError).finally(() => set.delete(tracked));
  set.add(tracked);
}

/**
 * Commits; when the server names chunks it lacks (gc removed them since the previous snapshot, or another
 * tenant holds them), reads those chunks from the source again, uploads them and commits again.
 */
async function commitWithRepair(
  o: BackupOptions,
  sessionId: string,
  header: ManifestHeader,
  spool: ManifestSpool,
  level: number,
  progress: BackupProgress,
  attempts: number,
): Promise<SnapshotInfo> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await o.client.commit(sessionId, () => spool.manifest(header));
    } catch (err) {
      const missing = isDiskvaultError(err) && err.code === 'Conflict' ? err.details?.missing : undefined;
      if (!Array.isArray(missing) || missing.length === 0) throw err;
      if (attempt >= attempts) {
        throw new DiskvaultError(
          'Conflict',
          `the server still lacks ${missing.length} chunks after ${attempts} commits`,
          {
            missing,
          },
        );
      }
      if (!o.source.seekable) {
        throw new DiskvaultError(
          'Conflict',
          `the server lacks ${missing.length} chunks the agent believed it held, and a piped image cannot be read again: run the backup again`,
          { missing },
        );
      }
      await uploadAgain(o, sessionId, spool, new Set(missing as string[]), level, progress);
    }
  }
}

async function uploadAgain(
  o: BackupOptions,
  sessionId: string,
  spool: ManifestSpool,
  wanted: Set<string>,
  level: number,
  progress: BackupProgress,
): Promise<void> {
  const located = await spool.locate(wanted);
  const gate = new Semaphore(Math.max(1, o.concurrency ?? o.client.concurrency));
  await Promise.all(
    located.map((c) =>
      gate.use(async () => {
        const buf = Buffer.alloc(c.length);
        const got = await readResilient(o.source, buf, c.offset);
        const piece = buf.subarray(0, got.bytes);
        const keyed = o.e2e ? e2eChunkId(o.e2e, piece) : undefined;
        const actual = keyed ? keyed.id.toString('hex') : createHash('sha256').update(piece).digest('hex');
        if (got.bytes !== c.length || actual !== c.id) {
          throw new InvalidInputError(
            `the source changed during the backup: bytes ${c.offset}..${c.offset + c.length} no longer match chunk ${c.id}`,
          );
        }
        const z = compress(buf, { compressionLevel: level });
        const useZ = compressionWorthwhile(z.length, buf.length);
        const payload = keyed
          ? sealChunk(o.e2e!, keyed.kid, buf.length, useZ ? z : buf, useZ)
          : useZ
            ? z
            : buf;
        await o.client.putChunk(sessionId, c.id, payload, keyed ? 'sealed' : useZ ? 'zstd' : 'raw');
        progress.newChunks++;
        progress.newBytes += c.length;
        progress.bytesUploaded += payload.length;
      }),
    ),
  );
}

function checkNames(host: string, disk: string, tags: string[], time: string): void {
  checkName('host name', host);
  checkName('disk name', disk);
  for (const t of tags) if (!TAG_PATTERN.test(t)) throw new InvalidInputError(`tag '${t}' is invalid`);
  if (tags.length > 64) throw new InvalidInputError('at most 64 tags');
  if (Number.isNaN(Date.parse(time))) throw new InvalidInputError(`time '${time}' is not an ISO 8601 date`);
}
