import { availableParallelism } from 'node:os';
import type { SnapshotInfo } from '../../api/protocol.js';
import { CHUNK_STREAM_PROTOCOL } from '../../common/chunk-stream.js';
import { InvalidInputError } from '../../common/errors.js';
import { checkName, TAG_PATTERN } from '../../common/names.js';
import { BufferRecycler } from '../../repo-engine/buffer-recycler.js';
import {
  type ChunkerParams,
  MANIFEST_FORMAT_VERSION,
  type ManifestHeader,
} from '../../repo-engine/manifest-codec.js';
import { ChunkSender } from '../chunk-sender.js';
import type { DiskvaultClient } from '../client.js';
import type { E2eKeys } from '../e2e/e2e-keys.js';
import { sealedHeader, workerKeys } from '../e2e/snapshot-key.js';
import { untilAborted } from '../interrupt.js';
import type { ImageSource } from '../source.js';
import { ChunkUploader } from './chunk-uploader.js';
import { Committer } from './committer.js';
import { CutChain } from './cut-chain.js';
import { IdSet } from './id-set.js';
import { ManifestSpool } from './manifest-spool.js';
import { PreviousManifest } from './previous-manifest.js';
import { mergeRanges, UnreadableBudget } from './resilient-read.js';
import { Semaphore } from './semaphore.js';
import { WindowRing } from './window-ring.js';
import { WorkerPool } from './worker-pool.js';

/** How often the live counters are reported between window boundaries. */
const PROGRESS_TICK_MS = 250;

/**
 * Windows the ring holds by default. Three keep every stage busy while the data is uniform; on a later night
 * the image's new data is cut, hashed and compressed far more slowly than unchanged data is hashed, and two
 * windows more let reading and the whole-image hash run that far ahead instead of waiting for a free window.
 * Five against three, a real later night (night3 over night2, 2 GiB, 12 alternating pairs): wall 3.72 against
 * 3.93 s (faster in 11 pairs), agent CPU 1.02x, peak memory +50 MiB (263 against 215 MiB); a first backup:
 * within noise (4 pairs).
 */
const WINDOWS_IN_FLIGHT = 5;

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
  /** Threads cutting, hashing and compressing. Default: defaultCutWorkers(). */
  workers?: number;
  /** Bytes read per window. Default 16 MiB. */
  windowBytes?: number;
  /** Windows held at once (at least 3: one read/cut, one hashed, one uploading). Default WINDOWS_IN_FLIGHT. */
  windowsInFlight?: number;
  /** zstd level for uploads. Default 1. */
  /** Send new chunks over the session's chunk stream when the server offers it (default), else one request each. */
  chunkStream?: boolean;
  compressionLevel?: number;
  /** Commits tried when the server names chunks it lacks. Default 4. */
  commitAttempts?: number;
  /** Unreadable bytes accepted before the backup stops and commits nothing (see UnreadableBudget). Default: no limit. */
  maxUnreadable?: { bytes: number; asGiven: string };
  /** An end-to-end backup's key: chunks are keyed and sealed, the image's hash sealed in the manifest. */
  e2e?: E2eKeys;
  onProgress?: (p: BackupProgress) => void;
  /** Stops the backup (Ctrl-C): the session is aborted and nothing is committed; run() rejects with its reason. */
  signal?: AbortSignal;
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

  o.signal?.throwIfAborted();
  const session = await client.createSession(
    o.host,
    o.disk,
    undefined,
    o.e2e ? { proof: o.e2e.proof.toString('base64') } : undefined,
  );
  const chunker = session.chunker;
  const pad = chunker.max;
  const windowBytes = Math.max(o.windowBytes ?? 16 * MiB, chunker.max);
  const level = o.compressionLevel ?? 1;
  const concurrency = Math.max(1, o.concurrency ?? client.concurrency);
  const budget = o.maxUnreadable
    ? new UnreadableBudget(o.maxUnreadable.bytes, o.maxUnreadable.asGiven)
    : undefined;
  const ring = new WindowRing(
    source,
    pad,
    windowBytes,
    Math.max(3, o.windowsInFlight ?? WINDOWS_IN_FLIGHT),
    budget,
  );
  let pool: WorkerPool | null = null;
  let hasher: WorkerPool | null = null;
  let spool: ManifestSpool | null = null;
  let sender: ChunkSender | null = null;

  const progress = freshProgress(source.size);
  const report = () => o.onProgress?.({ ...progress });
  // The pipeline reports at window boundaries; a source that stalls (a slow pipe, a disk retrying bad
  // sectors) would freeze the figures meanwhile, uploads included, so a ticker reports the live counters too.
  const ticker = o.onProgress ? setInterval(report, PROGRESS_TICK_MS) : undefined;
  ticker?.unref();

  try {
    spool = await ManifestSpool.create();
    const workers = Math.max(1, o.workers ?? defaultCutWorkers());
    pool = new WorkerPool(workers, {
      slots: ring.sabs,
      chunker,
      warmBytes: pad + windowBytes,
      ...(o.e2e ? { e2e: workerKeys(o.e2e) } : {}),
    });
    hasher = new WorkerPool(1, { slots: ring.sabs, chunker, warmBytes: 0 });
    const known = new IdSet(4096);
    // The previous snapshot's chunks are almost all still there: learn them while the first window is read.
    const previousLoad = session.previous
      ? PreviousManifest.download(client, session.previous.id, known)
      : Promise.resolve(null);
    const seeded = previousLoad.then(() => {});
    seeded.catch(() => {});
    // New chunks go over one long connection when the server offers it, not a request each.
    sender = await ChunkSender.open(
      client,
      session.id,
      (o.chunkStream ?? true) && session.chunkStream === CHUNK_STREAM_PROTOCOL,
    );
    const uploader = new ChunkUploader({
      client,
      sessionId: session.id,
      sender,
      pool,
      spool,
      slotBuffers: ring.buffers,
      known,
      seeded,
      uploads: new Semaphore(concurrency),
      // Compressed groups are written into buffers that go round (worker, uploads, back here) rather than
      // fresh ones per chunk: fresh megabytes page-fault on first touch and are unmapped again when collected.
      compressedBuffers: new BufferRecycler(64 * MiB, 4 * MiB),
      level,
      sealed: o.e2e !== undefined,
      progress,
      failed: () => chain.firstError !== null,
    });
    const chain: CutChain = new CutChain({
      ring,
      pool,
      hasher,
      imageSize: source.size,
      process: (w, from, cut) => uploader.process(w, from, cut),
      onRead: (bytes) => {
        progress.bytesRead += bytes;
      },
      onWindow: report,
    });
    // The fast path needs the whole chunk map before the first cut; a failed download only costs speed here
    // (the uploader still reports it through `seeded`).
    const chained = chain.run(
      previousLoad
        .catch(() => null)
        .then((loaded) => (loaded && sameChunker(loaded.chunker, chunker) ? loaded : null)),
    );
    // A read waiting on a slow pipe does not notice the signal: stop waiting for the chain instead.
    await untilAborted(chained, o.signal);
    await sender.close();
    await seeded;
    // A source of known size gave all of it, or the image changed under the backup: a file truncated while
    // it was read would otherwise be committed, without a word, as a smaller disk.
    if (source.size !== null && progress.bytesRead !== source.size)
      throw new InvalidInputError(
        `the image shrank while it was read: it ended at byte ${progress.bytesRead} of the ${source.size} it had when the backup began; nothing was committed`,
      );

    const sha256 = (await hasher.run({ type: 'image-digest' })).sha256;
    const unreadable = mergeRanges(ring.unreadable);
    const header: ManifestHeader = {
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
    };
    progress.phase = 'committing';
    report();
    const committer = new Committer({
      client,
      source,
      sessionId: session.id,
      spool,
      level,
      concurrency,
      attempts: o.commitAttempts ?? 4,
      progress,
      ...(o.e2e ? { e2e: o.e2e } : {}),
    });
    o.signal?.throwIfAborted();
    // End to end, the image's hash travels sealed; the summary still reports it (the agent knows it).
    const snapshot = await committer.commit(sealedHeader(o.e2e, header));
    return summarize(snapshot, header, progress, chain.reusedBytes, (performance.now() - started) / 1000);
  } catch (err) {
    // Leave nothing half-open on the server; a rerun uploads only what it still lacks.
    await client.abort(session.id).catch(() => {});
    throw err;
  } finally {
    clearInterval(ticker);
    sender?.destroy();
    await Promise.all([pool?.close(), hasher?.close(), spool?.close()]);
  }
}

function freshProgress(total: number | null): BackupProgress {
  return {
    phase: 'reading',
    bytesRead: 0,
    total,
    chunks: 0,
    newChunks: 0,
    newBytes: 0,
    knownBytes: 0,
    bytesUploaded: 0,
  };
}

function summarize(
  snapshot: SnapshotInfo,
  header: ManifestHeader,
  progress: BackupProgress,
  reusedBytes: number,
  seconds: number,
): BackupSummary {
  return {
    snapshot,
    size: header.size,
    sha256: header.sha256,
    chunks: progress.chunks,
    newChunks: progress.newChunks,
    newBytes: progress.newBytes,
    bytesUploaded: progress.bytesUploaded,
    seconds,
    unreadable: header.unreadable,
    dedupRatio: header.size === 0 ? 1 : 1 - progress.newBytes / header.size,
    reusedBytes,
    throughput: seconds > 0 ? header.size / seconds : 0,
    sourceFormat: header.sourceFormat,
  };
}

function sameChunker(a: ChunkerParams, b: ChunkerParams): boolean {
  return a.min === b.min && a.avg === b.avg && a.max === b.max;
}

function checkNames(host: string, disk: string, tags: string[], time: string): void {
  checkName('host name', host);
  checkName('disk name', disk);
  for (const t of tags) if (!TAG_PATTERN.test(t)) throw new InvalidInputError(`tag '${t}' is invalid`);
  if (tags.length > 64) throw new InvalidInputError('at most 64 tags');
  if (Number.isNaN(Date.parse(time))) throw new InvalidInputError(`time '${time}' is not an ISO 8601 date`);
}

/**
 * One cutting, hashing and compressing thread per CPU but one, and at least one: the whole-image hash runs on
 * a thread of its own (`hasher`), busy for much of every backup, so this many cutters fill the machine. On
 * 2 CPUs, one cutter against two, agent and server on one machine: first backup CPU 0.96x, wall 0.96x,
 * peak memory -26 MiB; a later night CPU 0.95x, wall 0.98x (farm-bench, 6 pairs each; docs/performance-notes.md).
 */
export function defaultCutWorkers(): number {
  return Math.max(1, availableParallelism() - 1);
}
