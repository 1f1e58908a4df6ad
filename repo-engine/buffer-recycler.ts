/** How many classes above its own a request may be served from (at most this many granules wasted). */
const SPARE_CLASSES = 2;

/**
 * Chunk-sized ArrayBuffers that go round instead of being allocated per chunk. A fresh multi-megabyte
 * buffer comes from mmap and page-faults on every first write, and is unmapped again when collected:
 * decompressing into fresh buffers ran at 0.43 GB/s here, into reused ones at 1.35 GB/s. Buffers may
 * travel between threads by transfer (a restore's decoder, main and image-hash threads) and come back
 * here once nothing uses them.
 *
 * Sizes go by classes of `granule` bytes, so a small chunk never pins a maximum-size buffer's pages, and
 * at most `maxFreeBytes` wait here unused: past that, buffers are left to the garbage collector.
 */
export class BufferRecycler {
  private readonly free = new Map<number, ArrayBuffer[]>();
  /** Buffers that came from here, or were handed back: only these may be transferred when a view is partial. */
  private readonly mine = new WeakSet<ArrayBuffer>();
  private freeBytes = 0;
  /** Buffers handed out again instead of allocated (for tests and diagnostics). */
  reused = 0;

  constructor(
    private readonly maxFreeBytes = 96 * 1024 * 1024,
    private readonly granule = 256 * 1024,
  ) {}

  /**
   * A buffer of at least `length` bytes, whose content is garbage: a free one of its size class, else of
   * one of the next few classes (compressed chunks vary in size, so the exact class is often empty while a
   * slightly larger one waits; at most `SPARE_CLASSES` granules and never more than the request's own size
   * are wasted), else a new one.
   */
  take(length: number): ArrayBuffer {
    const cls = Math.max(1, Math.ceil(length / this.granule));
    const largest = cls + Math.min(SPARE_CLASSES, cls);
    for (let c = cls; c <= largest; c++) {
      const ab = this.free.get(c)?.pop();
      if (ab) {
        this.freeBytes -= ab.byteLength;
        this.reused++;
        return ab;
      }
    }
    const fresh = new ArrayBuffer(cls * this.granule);
    this.mine.add(fresh);
    return fresh;
  }

  /** `take` as a Buffer of exactly `length` bytes. */
  takeBuffer(length: number): Buffer {
    return Buffer.from(this.take(length), 0, length);
  }

  /** `give` for a Buffer that is one of ours or spans its memory exactly; anything else is left alone. */
  giveBack(buf: Buffer): void {
    const ab = this.transferable(buf);
    if (ab) this.give(ab);
  }

  /** Marks a buffer that arrived from another thread, where it was one of ours, as ours again. */
  adopt(ab: ArrayBuffer): void {
    this.mine.add(ab);
  }

  /**
   * The ArrayBuffer behind `buf` if the caller may hand it to another thread: one of ours (a view from its
   * start), or a Buffer that spans its ArrayBuffer exactly. Otherwise undefined: copy before transferring.
   */
  transferable(buf: Buffer): ArrayBuffer | undefined {
    if (buf.byteOffset === 0 && buf.buffer instanceof ArrayBuffer && this.mine.has(buf.buffer))
      return buf.buffer;
    return ownedArrayBuffer(buf);
  }

  /**
   * Takes back a buffer that no one will read or write again. A detached buffer (transferred away) and
   * one too small for the smallest class are ignored.
   */
  give(ab: ArrayBuffer): void {
    const cls = Math.floor(ab.byteLength / this.granule);
    if (cls < 1 || this.freeBytes + ab.byteLength > this.maxFreeBytes) return;
    let list = this.free.get(cls);
    if (!list) {
      list = [];
      this.free.set(cls, list);
    }
    list.push(ab);
    this.mine.add(ab);
    this.freeBytes += ab.byteLength;
  }
}

/** The ArrayBuffer a Buffer spans exactly, or undefined when it is a view into something larger or shared. */
export function ownedArrayBuffer(buf: Buffer): ArrayBuffer | undefined {
  return buf.byteOffset === 0 && buf.byteLength === buf.buffer.byteLength && buf.buffer instanceof ArrayBuffer
    ? buf.buffer
    : undefined;
}
