import { type DiskvaultError, HashMismatchError, isDiskvaultError } from '../../common/errors.js';
import type { BufferRecycler } from '../../repo-engine/buffer-recycler.js';
import type { Slot } from './fetch-queue.js';
import type { ImageHasher } from './image-hasher.js';
import { appendRange } from './ranges.js';
import type { DamagedChunk, RestoreProgress, RestoreResult } from './restore.js';
import type { RestoreTarget } from './restore-target.js';
import type { ZeroChunks } from './zero-chunks.js';

const DAMAGE_CODES = new Set(['HashMismatch', 'Corrupt', 'NotFound']);
/**
 * Positional writes in flight, by target kind. A file's buffered writes all take its inode lock, so more than
 * two only spin on it (restore of the 2 GiB workload: agent CPU 0.89x and wall 0.92x with one in flight
 * against four; two measured the same as one). A block device keeps four: it was not measured.
 */
const WRITES_IN_FLIGHT = { file: 2, device: 4 } as const;

export interface TargetWriterOptions {
  target: RestoreTarget;
  zeros: ZeroChunks;
  recycler: BufferRecycler;
  /** Fed every byte of the image in order; none with --no-verify. */
  imageHash: ImageHasher | undefined;
  /** The figures being counted. */
  result: RestoreResult;
  /** The image size, for progress. */
  total: number;
  continueOnError: boolean;
  /** A slot's download, once it is in (see FetchQueue.received). */
  received: (slot: Slot) => Promise<Buffer | Error>;
  onProgress?: (p: RestoreProgress) => void;
  onDamage?: (d: DamagedChunk) => void;
  /** Once fired, no further chunk is written. */
  signal?: AbortSignal;
}

/**
 * Puts each chunk, in image order, where it belongs: writes fetched bytes (a few positional writes overlap
 * with the downloads; a stream gets them in order with its own backpressure), leaves holes for zeros where
 * the target reads zeros already, counts reused bytes, records damage, and feeds the whole-image hash.
 */
export class TargetWriter {
  private readonly writes = new Set<Promise<void>>();
  private writeFailure: unknown;
  private done = 0;

  constructor(private readonly o: TargetWriterOptions) {}

  /** Writes (or accounts for) one chunk; throws on damage (unless continuing) and on a failed write. */
  async finish(slot: Slot): Promise<void> {
    this.o.signal?.throwIfAborted();
    const { target, zeros, imageHash, result } = this.o;
    const opts = this.o;
    if (slot.reused) {
      result.chunksReused++;
      result.bytesReused += slot.length;
      // The bytes are on the target already; the hash thread reads them back (from the page cache).
      imageHash?.fromFile(target.path, slot.offset, slot.length);
    } else {
      let data: Buffer | undefined;
      if (slot.fetched) {
        const got = await this.o.received(slot);
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
        if (data) this.recycle(data);
        // A zero chunk, or a damaged one left as zeros: a fresh sparse file already reads zeros there.
        if (!target.holesAreZero) {
          await this.startWrite(zeros.zeroBytes(slot.length), slot.offset);
          result.bytesWritten += slot.length;
        }
        imageHash?.zeros(slot.length);
      } else {
        const written = (await this.startWrite(data, slot.offset)).done;
        result.bytesWritten += slot.length;
        // A stream may still hold the buffer after write() returns (a pipe's queue): only files hand it over.
        if (imageHash) imageHash.bytes(data, written, target.kind !== 'stream');
        else if (target.kind !== 'stream') {
          const sent = data;
          void written.then(() => this.recycle(sent));
        }
      }
    }
    await imageHash?.ready();
    if (this.writeFailure) throw this.writeFailure;
    this.done += slot.length;
    opts.onProgress?.({
      done: this.done,
      total: this.o.total,
      bytesFetched: result.bytesFetched,
      bytesReused: result.bytesReused,
      bytesWritten: result.bytesWritten,
    });
  }

  /** Waits for every write started; throws the first that failed. */
  async flush(): Promise<void> {
    await Promise.all(this.writes);
    if (this.writeFailure) throw this.writeFailure;
  }

  /** Lets every started write settle, failed or not (before the caller closes the file under them). */
  async settle(): Promise<void> {
    await Promise.allSettled([...this.writes]);
  }

  /** A chunk buffer no one reads any more; never the shared zero buffer nor a view into something else. */
  private recycle(buf: Buffer): void {
    this.o.recycler.giveBack(buf);
  }

  /** Starts a write and resolves once it is under way, with the write itself (boxed: promises flatten). */
  private async startWrite(buf: Buffer, offset: number): Promise<{ done: Promise<void> }> {
    const { target } = this.o;
    const { writes } = this;
    if (target.kind === 'stream') {
      // A stream takes bytes in order and has its own backpressure: wait for it right here.
      await target.write(buf, offset);
      return { done: Promise.resolve() };
    }
    // Positional writes overlap with downloads; a few in flight keep the disk busy without piling up.
    while (writes.size >= WRITES_IN_FLIGHT[target.kind]) await Promise.race(writes);
    const w = target.write(buf, offset).then(
      () => {
        writes.delete(w);
      },
      (err: unknown) => {
        writes.delete(w);
        this.writeFailure ??= err;
      },
    );
    writes.add(w);
    return { done: w };
  }
}

function damagedChunkError(d: DamagedChunk, cause: Error): DiskvaultError {
  const err = new HashMismatchError(
    `chunk ${d.chunk} (image bytes ${d.offset}..${d.offset + d.length - 1}, offset ${d.offset} length ${d.length}) is damaged: ${d.reason}`,
    { chunk: d.chunk, offset: d.offset, length: d.length },
  );
  (err as { cause?: unknown }).cause = cause;
  return err;
}
