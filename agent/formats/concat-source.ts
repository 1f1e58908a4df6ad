import type { ImageSource } from '../source.js';
import { SECTOR } from './limits.js';

export interface Part {
  /** Virtual offset where this part starts. */
  start: number;
  size: number;
  /** null: the part reads as zeros (a VMDK ZERO extent). */
  source: ImageSource | null;
}

/** A disk made of parts laid end to end (the extents of a multi-extent VMDK). */
export class ConcatSource implements ImageSource {
  readonly sectorSize = SECTOR;
  readonly seekable = true;
  readonly size: number;

  constructor(
    readonly format: string,
    private readonly parts: Part[],
  ) {
    this.size = parts.reduce((sum, p) => sum + p.size, 0);
  }

  async read(buf: Buffer, offset: number): Promise<number> {
    if (offset >= this.size) return 0;
    const total = Math.min(buf.length, this.size - offset);
    let done = 0;
    for (const part of this.parts) {
      if (done >= total) break;
      const pos = offset + done;
      if (pos >= part.start + part.size) continue;
      const n = Math.min(total - done, part.start + part.size - pos);
      const target = buf.subarray(done, done + n);
      const got = part.source ? await part.source.read(target, pos - part.start) : 0;
      if (got < n) target.fill(0, got);
      done += n;
    }
    return total;
  }

  async close(): Promise<void> {
    for (const p of this.parts) await p.source?.close();
  }
}
