import type { CutChunks } from './chunk-uploader.js';
import type { PreviousManifest } from './previous-manifest.js';
import type { Window, WindowRing } from './window-ring.js';
import type { JobResult } from './worker.js';
import type { WorkerPool } from './worker-pool.js';

/** A cut of the chain: where it starts in the image and in the slot, and the cut itself on its way. */
interface PendingCut {
  cutStart: number;
  from: number;
  result: Promise<Extract<JobResult, { type: 'cut' }>>;
}

export interface CutChainOptions {
  ring: WindowRing;
  pool: WorkerPool;
  /** The thread feeding the whole-image SHA-256. */
  hasher: WorkerPool;
  imageSize: number | null;
  /** Takes a cut window's chunks (hash, spool, upload); its hold on the window ends when the promise settles. */
  process: (w: Window, from: number, cut: CutChunks) => Promise<void>;
  /** After each window is cut. */
  onWindow: () => void;
  /** Counts the bytes read, at each window. */
  onRead: (bytes: number) => void;
}

/**
 * Reads the image window by window through the ring, hashes each into the image digest and cuts it into
 * chunks. Cuts form a chain (each needs the carry the previous one leaves), so one runs at a time. Where last
 * night's chunk map predicts the carry, the next window's cut starts at once from that guess, on another
 * thread, and is kept only if the real carry matches; otherwise it is cut again from the real one. An
 * unchanged disk so keeps two threads proving chunks instead of one. The first failure of any window's work
 * stops the chain and is thrown from run().
 */
export class CutChain {
  /** Image bytes cut by checking the previous snapshot's chunks instead of running fastcdc. */
  reusedBytes = 0;
  /** The first failure of any window's work. */
  firstError: unknown = null;
  private readonly inFlight = new Set<Promise<void>>();
  private previous: PreviousManifest | null = null;

  constructor(private readonly o: CutChainOptions) {}

  /**
   * Runs the chain to the end of the image. `previous` (the fast path's chunk map, or null) is awaited only
   * once the first window's read is under way. Resolves when every window's work has finished.
   */
  async run(previous: Promise<PreviousManifest | null>): Promise<void> {
    const { ring, hasher } = this.o;
    const { pad } = ring;
    let next = ring.read(0, 0);
    this.previous = await previous;
    /** The read of the window after `w` starts once `w` is in hand, and only once. */
    let readAfter = -1;
    const readAhead = (w: Window) => {
      if (w.eof || readAfter === w.index) return;
      readAfter = w.index;
      next = ring.read(w.index + 1, w.offset + w.bytes);
      next.catch(() => {});
    };
    let current = await next;
    let cut = this.startCut(current, current.offset);
    for (;;) {
      // A const per window: the callbacks below settle after the loop has moved on to the next one.
      const w = current;
      this.o.onRead(w.bytes);
      readAhead(w);
      w.holds = w.eof ? 2 : 3; // image hash + chunk processing (+ the carry the next window copies)
      const hashing = hasher.run({ type: 'image-update', slot: w.slot, from: pad, to: pad + w.bytes });
      this.track(hashing.then(() => ring.release(w)));
      let following: Window | null = null;
      let guess: PendingCut | null = null;
      const predicted = w.eof
        ? null
        : (this.previous?.carryStartAt(w.offset + w.bytes, this.o.imageSize !== null) ?? null);
      if (predicted !== null && w.offset + w.bytes - predicted <= pad) {
        following = await next;
        readAhead(following);
        ring.copyCarry(w, following, predicted);
        guess = this.startCut(following, predicted);
      }
      const done = await cut.result;
      this.reusedBytes += done.reusedBytes;
      this.track(this.o.process(w, cut.from, done).finally(() => ring.release(w)));
      this.o.onWindow();
      if (this.firstError) throw this.firstError;
      if (w.eof) break;
      following ??= await next;
      const carryStart = w.offset + (done.carryFrom - pad);
      if (guess && guess.cutStart === carryStart) cut = guess;
      else {
        // The guessed cut still reads the slot: let it finish before the carry in front is rewritten.
        if (guess) await guess.result.catch(() => {});
        ring.copyCarry(w, following, carryStart);
        cut = this.startCut(following, carryStart);
      }
      ring.release(w);
      current = following;
    }
    await Promise.all([...this.inFlight]);
    if (this.firstError) throw this.firstError;
  }

  /**
   * Starts the cut of window `w` from image offset `cutStart` (a true chunk boundary at or before the
   * window's fresh bytes), the carry [cutStart, w.offset) having been copied in front of them.
   */
  private startCut(w: Window, cutStart: number): PendingCut {
    const { pad } = this.o.ring;
    const from = pad - (w.offset - cutStart);
    const to = pad + w.bytes;
    const result = this.o.pool.run({
      type: 'cut',
      slot: w.slot,
      from,
      to,
      final: w.eof,
      imageOffset: cutStart,
      imageSize: this.o.imageSize,
      previous: this.previous?.slice(cutStart, cutStart + (to - from)) ?? null,
    });
    result.catch(() => {});
    return { cutStart, from, result };
  }

  private track(p: Promise<void>): void {
    const tracked = p
      .catch((e: unknown) => {
        this.firstError ??= e;
      })
      .finally(() => this.inFlight.delete(tracked));
    this.inFlight.add(tracked);
  }
}
