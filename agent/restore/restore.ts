import { InvalidInputError } from '../../common/errors.js';
import { BufferRecycler } from '../../repo-engine/buffer-recycler.js';
import { MANIFEST_ENTRY_BYTES, type ManifestHeader } from '../../repo-engine/manifest-codec.js';
import { e2eChunkId } from '../e2e/chunk-sealing.js';
import type { ChunkOpeningKeys } from './chunk-decoder.js';
import type { ChunkFetcher } from './chunk-fetcher.js';
import { FetchQueue } from './fetch-queue.js';
import { ImageHasher } from './image-hasher.js';
import type { ByteRange } from './ranges.js';
import type { RestoreTarget } from './restore-target.js';
import { TargetScanner } from './target-scanner.js';
import { TargetWriter } from './target-writer.js';
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
  /**
   * Stops the restore (Ctrl-C): no new chunk is written once it fires, the writes already started settle, and
   * restoreSnapshot rejects with its reason. The target keeps what was written (--in-place resumes it).
   */
  signal?: AbortSignal;
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
  const maxChunk = Math.max(header.chunker.max, 1);
  const e2e = opts.e2e;
  const zeros = new ZeroChunks(
    [header.chunker.max],
    Math.min(maxChunk, 64 * 1024 * 1024),
    e2e
      ? (b) =>
          e2eChunkId({ idKey: e2e.idKey, keyIdBytes: Buffer.from(e2e.keyId, 'hex') }, b).id.toString('hex')
      : undefined,
  );
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
  const writer: TargetWriter = new TargetWriter({
    target,
    zeros,
    recycler,
    imageHash,
    result,
    total: header.size,
    continueOnError: opts.continueOnError ?? false,
    received: (slot) => queue.received(slot),
    ...(opts.signal ? { signal: opts.signal } : {}),
    ...(opts.onProgress ? { onProgress: opts.onProgress } : {}),
    ...(opts.onDamage ? { onDamage: opts.onDamage } : {}),
  });
  const queue = new FetchQueue({
    fetcher,
    recycler,
    zeros,
    concurrency: Math.max(1, opts.concurrency ?? 12),
    consume: (slot) => writer.finish(slot),
    ...(opts.e2e ? { e2e: opts.e2e } : {}),
  });

  try {
    let offset = 0;
    const pieces = scanner ? scanner.scan(opts.entryBatches) : withoutFlags(opts.entryBatches);
    for await (const { entries: batch, flags } of pieces) {
      for (let at = 0, i = 0; at < batch.length; at += MANIFEST_ENTRY_BYTES, i++) {
        opts.signal?.throwIfAborted();
        const length = batch.readUInt32BE(at + 32);
        await queue.add(batch.toString('hex', at, at + 32), offset, length, Boolean(flags?.[i]));
        offset += length;
      }
    }
    await queue.drain();
    await writer.flush();
    await target.finish();
    if (imageHash) {
      result.sha256 = await imageHash.digest();
      result.verified = result.sha256 === header.sha256 && result.damaged.length === 0;
    }
  } finally {
    // Let every started write settle before the caller closes the file under it, and every started download
    // settle before the decoders close: a download finishing later would start a new decode pool that keeps
    // the process alive after a failed restore.
    await Promise.all([writer.settle(), queue.settle()]);
    await imageHash?.close();
    await scanner?.close();
    await queue.close();
  }

  result.seconds = (performance.now() - started) / 1000;
  return result;
}

async function* withoutFlags(
  batches: AsyncIterable<Buffer>,
): AsyncGenerator<{ entries: Buffer; flags?: Uint8Array }> {
  for await (const entries of batches) yield { entries };
}
