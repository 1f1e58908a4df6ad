import type { ImageSource } from '../../agent/source.js';

/**
 * An in-memory disk with bad sectors: any read overlapping a bad range throws EIO, as a failing drive does,
 * so the backup's narrowing can be tested without broken hardware. `flaky` ranges fail only their first
 * `flakyFailures` reads (a marginal sector that reads on retry).
 */
export interface FailingSourceOptions {
  bad?: [number, number][];
  flaky?: [number, number][];
  flakyFailures?: number;
  sectorSize?: number;
  seekable?: boolean;
}

export class FailingSource implements ImageSource {
  readonly size: number;
  readonly sectorSize: number;
  readonly format = 'raw';
  readonly seekable: boolean;
  reads = 0;
  private readonly flakyLeft = new Map<number, number>();

  constructor(
    private readonly data: Buffer,
    private readonly opts: FailingSourceOptions = {},
  ) {
    this.size = data.length;
    this.sectorSize = opts.sectorSize ?? 512;
    this.seekable = opts.seekable ?? true;
    for (let i = 0; i < (opts.flaky ?? []).length; i++) this.flakyLeft.set(i, opts.flakyFailures ?? 2);
  }

  async read(buf: Buffer, offset: number): Promise<number> {
    this.reads++;
    const end = Math.min(offset + buf.length, this.size);
    const overlaps = ([o, l]: [number, number]) => o < end && offset < o + l;
    if ((this.opts.bad ?? []).some(overlaps)) throw eio(offset);
    for (const [i, r] of (this.opts.flaky ?? []).entries()) {
      const left = this.flakyLeft.get(i) ?? 0;
      if (overlaps(r) && left > 0) {
        this.flakyLeft.set(i, left - 1);
        throw eio(offset);
      }
    }
    if (offset >= this.size) return 0;
    return this.data.copy(buf, 0, offset, end);
  }

  async close(): Promise<void> {}
}

function eio(offset: number): NodeJS.ErrnoException {
  return Object.assign(new Error(`EIO: i/o error, read at ${offset}`), { code: 'EIO', errno: -5 });
}
