import type { ImageSource } from '../source.js';
import { readResilient, type UnreadableBudget } from './resilient-read.js';
import { Semaphore } from './semaphore.js';

/** One window of the image, read into a slot of the ring. */
export interface Window {
  index: number;
  slot: number;
  /** Image offset of the window's fresh bytes, which sit at slot position `pad`. */
  offset: number;
  bytes: number;
  eof: boolean;
  /** Things still using the slot: image hash, chunk processing, the carry the next window copies. */
  holds: number;
}

/**
 * The fixed ring of windows the image is read into: `slots` SharedArrayBuffers (worker threads see them
 * without copies) of `pad` bytes of room for the carry from the previous window followed by `windowBytes`
 * fresh bytes. A read waits for a free slot; a slot is free again once every hold on its window is released,
 * so memory is slots x window size whatever the disk size.
 */
export class WindowRing {
  readonly sabs: SharedArrayBuffer[];
  readonly buffers: Buffer[];
  /** Ranges the source could not read (stored as zeros), in the order met. */
  readonly unreadable: [number, number][] = [];
  private readonly free: number[];
  private readonly gate: Semaphore;

  constructor(
    private readonly source: ImageSource,
    readonly pad: number,
    readonly windowBytes: number,
    slots: number,
    private readonly budget?: UnreadableBudget,
  ) {
    this.sabs = Array.from({ length: slots }, () => new SharedArrayBuffer(pad + windowBytes));
    this.buffers = this.sabs.map((s) => Buffer.from(s));
    this.free = Array.from({ length: slots }, (_, i) => i);
    this.gate = new Semaphore(slots);
  }

  /** Reads window `index` (image bytes from `offset`) into a free slot, waiting for one. */
  async read(index: number, offset: number): Promise<Window> {
    const { source, pad, windowBytes } = this;
    await this.gate.acquire();
    const slot = this.free.pop()!;
    try {
      const want = source.size === null ? windowBytes : Math.min(windowBytes, source.size - offset);
      const view = this.buffers[slot].subarray(pad, pad + want);
      const got =
        want > 0
          ? await readResilient(source, view, offset, { budget: this.budget })
          : { bytes: 0, unreadable: [] };
      if (got.unreadable.length > 0) this.unreadable.push(...got.unreadable);
      const eof = got.bytes < windowBytes || (source.size !== null && offset + got.bytes >= source.size);
      return { index, slot, offset, bytes: got.bytes, eof, holds: 0 };
    } catch (err) {
      this.free.push(slot);
      this.gate.release();
      throw err;
    }
  }

  /** Drops one hold on `w`; the last one frees its slot. */
  release(w: Window): void {
    if (--w.holds === 0) {
      this.free.push(w.slot);
      this.gate.release();
    }
  }

  /** Copies the carry [cutStart, end of `before`) from `before`'s slot in front of `w`'s fresh bytes. */
  copyCarry(before: Window, w: Window, cutStart: number): void {
    const { pad } = this;
    const carry = w.offset - cutStart;
    this.buffers[before.slot].copy(
      this.buffers[w.slot],
      pad - carry,
      pad + (cutStart - before.offset),
      pad + before.bytes,
    );
  }
}
