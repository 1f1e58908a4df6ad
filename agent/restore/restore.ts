import {
  type DiskvaultError,
  HashMismatchError,
  InvalidInputError,
  isDiskvaultError,
} from '../../common/errors.js';
import { BufferRecycler } from '../../repo-engine/buffer-recycler.js';
import { MANIFEST_ENTRY_BYTES, type ManifestHeader } from '../../repo-engine/manifest-codec.js';
import type { ChunkOpeningKeys } from './chunk-decoder.js';
import { decodeChunk } from './chunk-decoder.js';
import type { ChunkFetcher } from './chunk-fetcher.js';
import { DecodePool } from './decode-pool.js';
import { ImageHasher } from './image-hasher.js';
import { appendRange, type ByteRange } from './ranges.js';
import type { RestoreTarget } from './restore-target.js';
import { TargetScanner } from './target-scanner.js';
import { ZeroChunks } from './zero-chunks.js';

export interface RestoreOptions {
  header: ManifestHeader;
  /** The manifest's entries in batches of 36-byte records (ManifestReader.entryBatches()). */
  entryBatches: AsyncIterable<Buffer>;
  fetcher: ChunkFetcher;
  target: RestoreTarget;
  /** Compare the target's current content and rewrite only the chunks that differ. */
  inPlace?: boolean;
  /** Hash the whole restored image and compare it with the manifest's (default true). */
  verify?: boolean;
  /** Leave damaged chunks as zeros and go on, instead of stopping at the first. */
  continueOnError?: boolean;
  /** Chunk downloads in flight (default 12). */
  concurrency?: number;
  onProgress?: (p: RestoreProgress) => void;
  onDamage?: (d: DamagedChunk) => void;
  /** An end-to-end snapshot's key: every chunk is opened and checked with it (agent/e2e/). */
  e2e?: ChunkOpeningKeys;
}

export interface RestoreProgress {
  done: number;
  total: number;
  bytesFetched: number;
  bytesReused: number;
  bytesWritten: number;
}

export interface DamagedChunk {
  chunk: string;
  offset: number;
  length: number;
  reason: string;
}

export interface RestoreResult {
  snapshot: string;
  size: number;
  chunks: number;
  chunksFetched: number;
  chunksReused: number;
  zeroChunks: number;
  /** Bytes handed to the target (a hole is not a write). */
  bytesWritten: number;
  /** Raw bytes of the chunks downloaded. */
  bytesFetched: number;
  /** Bytes already correct in the target (--in-place). */
  bytesReused: number;
  seconds: number;
  /** The image's SHA-256 as restored; null with --no-verify. */
  sha256: string | null;
  expectedSha256: string;
  /** True only when the whole image was hashed, matched the manifest and no chunk was damaged. */
  verified: boolean;
  unreadable: ByteRange[];
  damaged: ByteRange[];
}

/** One chunk on its way through the pipeline, in image order. */
interface Slot {
  id: string;
  offset: number;
  length: number;
  /** The target already holds these bytes (--in-place). */
  reused?: boolean;
  zero?: boolean;
  /** A download; settles to the raw bytes or the error (never rejects, so no rejection goes unhandled). */
  fetched?: Promise<Buffer | DiskvaultError | Error>;
}

const DAMAGE_CODES = new Set(['HashMismatch', 'Corrupt', 'NotFound']);

/**
 * Rebuilds a snapshot's image on a target. Entries stream from the manifest batch by batch; a bounded
 * window of chunks is downloaded concurrently while results are consumed strictly in image order, so the
 * whole-image hash runs as a cursor over the image and a stream target gets its bytes in order. Memory is
 * bounded by the window, never by the manifest.
 */
export async function restoreSnapshot(opts: RestoreOptions): Promise<RestoreResult> {
  const started = performance.now();
  const { header, target, fetcher } = opts;
  const verify = opts.verify ?? true;
  const concurrency = Math.max(1, opts.concurrency ?? 12);
  // Zero, reused and fetched slots all wait in one queue; only downloads hold chunk-sized memory
  // (reused bytes stay on the target), so the queue may run further ahead than the downloads.
  const maxQueued = concurrency * 4;
  const maxChunk = Math.max(header.chunker.max, 1);
  const zeros = new ZeroChunks([header.chunker.max], Math.min(maxChunk, 64 * 1024 * 1024));
  if (opts.inPlace && target.kind === 'stream')
    throw new InvalidInputError('--in-place needs a file or a block device');
  const scanner = opts.inPlace
    ? new TargetScanner({
        path: target.path,
        size: header.size,
        zeroIds: zeros.knownIds(),
        ...(opts.e2e ? { e2e: opts.e2e } : {}),
      })
    : undefined;
  // Chunk buffers go round (download, decode, write, hash, back) instead of being allocated per chunk.
  const recycler = new BufferRecycler();
  const imageHash = verify ? new ImageHasher(undefined, recycler) : undefined;
  // Threads only when some fetcher hands over undecoded payloads (the in-memory one, a payload-level client).
  let decoders: DecodePool | undefined;
  const inFlight = new Map<string, Promise<Buffer | Error>>();
  const queue: Slot[] = [];
  const writes = new Set<Promise<void>>();
  let writeFailure: unknown;
  let downloads = 0;

  const result: RestoreResult = {
    snapshot: header.id ?? '',
    size: header.size,
    chunks: header.chunkCount,
    chunksFetched: 0,
    chunksReused: 0,
    zeroChunks: 0,
    bytesWritten: 0,
    bytesFetched: 0,
    bytesReused: 0,
    seconds: 0,
    sha256: null,
    expectedSha256: header.sha256,
    verified: false,
    unreadable: header.unreadable.map((r) => [r[0], r[1]]),
    damaged: [],
  };
  let done = 0;

  const fetchChunk = (id: string, length: number): Promise<Buffer | Error> => {
    // The same chunk twice in one window is downloaded once.
    const running = inFlight.get(id);
    // A copy for the second user: the first one's buffer is handed to the hash thread after its write.
    if (running) return running.then((b) => (Buffer.isBuffer(b) ? Buffer.from(b) : b));
    const p = fetcher
      .fetch(id, length, recycler)
      .then(async (fetched) => {
        // Already-checked bytes only need their length checked, which is cheap enough for this thread.
        if (!fetched.verified) decoders ??= new DecodePool(undefined, recycler, opts.e2e);
        const raw =
          decoders && !fetched.verified
            ? await decoders.decode(fetched, id, length)
            : decodeChunk(fetched, id, length, undefined, opts.e2e);
        zeros.learn(id, raw);
        return raw;
      })
      .catch((err: unknown) => (err instanceof Error ? err : new Error(String(err))))
      .finally(() => inFlight.delete(id));
    inFlight.set(id, p);
    return p;
  };

  /** A chunk buffer no one reads any more; never the shared zero buffer nor a view into something else. */
  const recycle = (buf: Buffer): void => recycler.giveBack(buf);

  /** Starts a write and resolves once it is under way, with the write itself (boxed: promises flatten). */
  const startWrite = async (buf: Buffer, offset: number): Promise<{ done: Promise<void> }> => {
    if (target.kind === 'stream') {
      // A stream takes bytes in order and has its own backpressure: wait for it right here.
      await target.write(buf, offset);
      return { done: Promise.resolve() };
    }
    // Positional writes overlap with downloads; a handful in flight keeps the disk busy without piling up.
    while (writes.size >= 4) await Promise.race(writes);
    const w = target.write(buf, offset).then(
      () => {
        writes.delete(w);
      },
      (err: unknown) => {
        writes.delete(w);
        writeFailure ??= err;
      },
    );
    writes.add(w);
    return { done: w };
  };

  const finishSlot = async (slot: Slot): Promise<void> => {
    if (slot.reused) {
      result.chunksReused++;
      result.bytesReused += slot.length;
      // The bytes are on the target already; the hash thread reads them back (from the page cache).
      imageHash?.fromFile(target.path, slot.offset, slot.length);
    } else {
      let data: Buffer | undefined;
      if (slot.fetched) {
        const got = await slot.fetched;
        downloads--;
        if (got instanceof Error) {
          if (!(isDiskvaultError(got) && DAMAGE_CODES.has(got.code))) throw got;
          const damage = { chunk: slot.id, offset: slot.offset, length: slot.length, reason: got.message };
          if (!opts.continueOnError) throw damagedChunkError(damage, got);
          appendRange(result.damaged, slot.offset, slot.length);
          opts.onDamage?.(damage);
        } else {
          data = got;
          result.chunksFetched++;
          result.bytesFetched += slot.length;
          if (zeros.isZeroId(slot.id)) slot.zero = true;
        }
      }
      if (slot.zero) result.zeroChunks++;
      if (data === undefined || (slot.zero && target.holesAreZero)) {
        if (data) recycle(data);
        // A zero chunk, or a damaged one left as zeros: a fresh sparse file already reads zeros there.
        if (!target.holesAreZero) {
          await startWrite(zeros.zeroBytes(slot.length), slot.offset);
          result.bytesWritten += slot.length;
        }
        imageHash?.zeros(slot.length);
      } else {
        const written = (await startWrite(data, slot.offset)).done;
        result.bytesWritten += slot.length;
        // A stream may still hold the buffer after write() returns (a pipe's queue): only files hand it over.
        if (imageHash) imageHash.bytes(data, written, target.kind !== 'stream');
        else if (target.kind !== 'stream') {
          const sent = data;
          void written.then(() => recycle(sent));
        }
      }
    }
    await imageHash?.ready();
    if (writeFailure) throw writeFailure;
    done += slot.length;
    opts.onProgress?.({
      done,
      total: header.size,
      bytesFetched: result.bytesFetched,
      bytesReused: result.bytesReused,
      bytesWritten: result.bytesWritten,
    });
  };

  const drainHead = async (): Promise<void> => {
    const slot = queue.shift();
    if (slot) await finishSlot(slot);
  };

  try {
    let offset = 0;
    const pieces = scanner ? scanner.scan(opts.entryBatches) : withoutFlags(opts.entryBatches);
    for await (const { entries: batch, flags } of pieces) {
      for (let at = 0, i = 0; at < batch.length; at += MANIFEST_ENTRY_BYTES, i++) {
        const id = batch.toString('hex', at, at + 32);
        const length = batch.readUInt32BE(at + 32);
        const slot: Slot = { id, offset, length };
        offset += length;
        if (flags?.[i]) slot.reused = true;
        if (!slot.reused) {
          // Waiting for a download slot may teach us that this id is a zero chunk: check after the wait.
          while (!zeros.isZeroId(id) && downloads >= concurrency) await drainHead();
          if (zeros.isZeroId(id)) slot.zero = true;
          else {
            slot.fetched = fetchChunk(id, length);
            downloads++;
          }
        }
        queue.push(slot);
        while (queue.length >= maxQueued) await drainHead();
      }
    }
    while (queue.length > 0) await drainHead();
    await Promise.all(writes);
    if (writeFailure) throw writeFailure;
    await target.finish();
    if (imageHash) {
      result.sha256 = await imageHash.digest();
      result.verified = result.sha256 === header.sha256 && result.damaged.length === 0;
    }
  } finally {
    // Let every started write settle before the caller closes the file under it, and every started download
    // settle before the decoders close: a download finishing later would start a new decode pool that keeps
    // the process alive after a failed restore.
    await Promise.allSettled([...writes, ...inFlight.values()]);
    await imageHash?.close();
    await scanner?.close();
    await decoders?.close();
  }

  result.seconds = (performance.now() - started) / 1000;
  return result;
}

async function* withoutFlags(
  batches: AsyncIterable<Buffer>,
): AsyncGenerator<{ entries: Buffer; flags?: Uint8Array }> {
  for await (const entries of batches) yield { entries };
}

function damagedChunkError(d: DamagedChunk, cause: Error): DiskvaultError {
  const err = new HashMismatchError(
    `chunk ${d.chunk} (image bytes ${d.offset}..${d.offset + d.length - 1}, offset ${d.offset} length ${d.length}) is damaged: ${d.reason}`,
    { chunk: d.chunk, offset: d.offset, length: d.length },
  );
  (err as { cause?: unknown }).cause = cause;
  return err;
}
