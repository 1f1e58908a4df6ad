import type { DiskvaultError } from '../../common/errors.js';
import type { BufferRecycler } from '../../repo-engine/buffer-recycler.js';
import { type ChunkOpeningKeys, decodeChunk } from './chunk-decoder.js';
import type { ChunkFetcher } from './chunk-fetcher.js';
import { DecodePool } from './decode-pool.js';
import type { ZeroChunks } from './zero-chunks.js';

/** One chunk on its way through the pipeline, in image order. */
export interface Slot {
  id: string;
  offset: number;
  length: number;
  /** The target already holds these bytes (--in-place). */
  reused?: boolean;
  zero?: boolean;
  /** A download; settles to the raw bytes or the error (never rejects, so no rejection goes unhandled). */
  fetched?: Promise<Buffer | DiskvaultError | Error>;
}

export interface FetchQueueOptions {
  fetcher: ChunkFetcher;
  recycler: BufferRecycler;
  zeros: ZeroChunks;
  /** Chunk downloads in flight. */
  concurrency: number;
  /** Takes the queue's head, in image order (writes it, hashes it). */
  consume: (slot: Slot) => Promise<void>;
  /** An end-to-end snapshot's key: every chunk is opened and checked with it (agent/e2e/). */
  e2e?: ChunkOpeningKeys;
}

/**
 * The chunks of the image in order, each starting its download as it joins (at most `concurrency` at once)
 * and handed to `consume` strictly in image order. Zero, reused and fetched slots all wait in one queue; only
 * downloads hold chunk-sized memory (reused bytes stay on the target), so the queue may run further ahead
 * than the downloads.
 */
export class FetchQueue {
  private readonly queue: Slot[] = [];
  private readonly inFlight = new Map<string, Promise<Buffer | Error>>();
  private readonly maxQueued: number;
  private downloads = 0;
  /** Threads only when some fetcher hands over undecoded payloads (the in-memory one, a payload-level client). */
  private decoders: DecodePool | undefined;

  constructor(private readonly o: FetchQueueOptions) {
    this.maxQueued = o.concurrency * 4;
  }

  /** Adds the next chunk of the image; waits while the queue or the downloads are full. */
  async add(id: string, offset: number, length: number, reused: boolean): Promise<void> {
    const { zeros, concurrency } = this.o;
    const slot: Slot = { id, offset, length };
    if (reused) slot.reused = true;
    if (!slot.reused) {
      // Waiting for a download slot may teach us that this id is a zero chunk: check after the wait.
      while (!zeros.isZeroId(id) && this.downloads >= concurrency) await this.drainHead();
      if (zeros.isZeroId(id)) slot.zero = true;
      else {
        slot.fetched = this.fetchChunk(id, length);
        this.downloads++;
      }
    }
    this.queue.push(slot);
    while (this.queue.length >= this.maxQueued) await this.drainHead();
  }

  /** Hands every queued chunk to `consume`. */
  async drain(): Promise<void> {
    while (this.queue.length > 0) await this.drainHead();
  }

  /** A fetched slot's raw bytes or error, once downloaded; its download place is then free. */
  async received(slot: Slot): Promise<Buffer | Error> {
    const got = await slot.fetched!;
    this.downloads--;
    return got;
  }

  /** Resolves once every started download has settled (decoded or failed); never rejects. */
  async settle(): Promise<void> {
    await Promise.allSettled([...this.inFlight.values()]);
  }

  /**
   * Waits for the started downloads, then closes the decode threads: a download settling after the close
   * would start a new decode pool that keeps the process alive after a failed restore.
   */
  async close(): Promise<void> {
    await this.settle();
    await this.decoders?.close();
  }

  private async drainHead(): Promise<void> {
    const slot = this.queue.shift();
    if (slot) await this.o.consume(slot);
  }

  private fetchChunk(id: string, length: number): Promise<Buffer | Error> {
    const { fetcher, recycler, zeros } = this.o;
    // The same chunk twice in one window is downloaded once.
    const running = this.inFlight.get(id);
    // A copy for the second user: the first one's buffer is handed to the hash thread after its write.
    if (running) return running.then((b) => (Buffer.isBuffer(b) ? Buffer.from(b) : b));
    const p = fetcher
      .fetch(id, length, recycler)
      .then(async (fetched) => {
        // Already-checked bytes only need their length checked, which is cheap enough for this thread.
        if (!fetched.verified) this.decoders ??= new DecodePool(undefined, recycler, this.o.e2e);
        const raw =
          this.decoders && !fetched.verified
            ? await this.decoders.decode(fetched, id, length)
            : decodeChunk(fetched, id, length, undefined, this.o.e2e);
        zeros.learn(id, raw);
        return raw;
      })
      .catch((err: unknown) => (err instanceof Error ? err : new Error(String(err))))
      .finally(() => this.inFlight.delete(id));
    this.inFlight.set(id, p);
    return p;
  }
}
