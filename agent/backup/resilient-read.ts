import type { ImageSource } from '../source.js';

/**
 * Reads a range of the image without giving up on bad sectors. A failing read is retried; if it still
 * fails the range is halved (on sector boundaries) until single sectors remain, and only the sectors that
 * cannot be read are left as zeros and reported. One bad sector costs a few dozen reads, not the backup.
 */
export interface ReadOutcome {
  /** Bytes that belong to the image (short only at the end of the image). */
  bytes: number;
  /** [offset, length] ranges filled with zeros because they could not be read, merged, in order. */
  unreadable: [number, number][];
}

export interface ResilientReadOptions {
  /** Reads of the same range before it is split. Default 3. */
  attempts?: number;
}

function isMediumError(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException)?.code;
  return code === 'EIO' || code === 'ENXIO' || code === 'EBADMSG' || code === 'ENODATA';
}

async function tryRead(
  source: ImageSource,
  buf: Buffer,
  offset: number,
  attempts: number,
): Promise<number | 'failed'> {
  for (let i = 0; i < attempts; i++) {
    try {
      return await source.read(buf, offset);
    } catch (err) {
      if (!isMediumError(err)) throw err;
    }
  }
  return 'failed';
}

export async function readResilient(
  source: ImageSource,
  buf: Buffer,
  offset: number,
  opts: ResilientReadOptions = {},
): Promise<ReadOutcome> {
  const attempts = opts.attempts ?? 3;
  const first = await tryRead(source, buf, offset, attempts);
  if (first !== 'failed') return { bytes: first, unreadable: [] };
  if (!source.seekable) {
    throw Object.assign(
      new Error(`read error at byte ${offset} of a piped image, which cannot be read again`),
      { code: 'EIO' },
    );
  }
  const unreadable: [number, number][] = [];
  const end = source.size === null ? offset + buf.length : Math.min(offset + buf.length, source.size);
  const bytes = await narrow(source, buf, offset, offset, end, attempts, unreadable);
  return { bytes, unreadable: mergeRanges(unreadable) };
}

/** Reads [from, to) into buf (which starts at image offset `base`); returns where the image's data ends. */
async function narrow(
  source: ImageSource,
  buf: Buffer,
  base: number,
  from: number,
  to: number,
  attempts: number,
  unreadable: [number, number][],
): Promise<number> {
  const view = buf.subarray(from - base, to - base);
  const got = await tryRead(source, view, from, attempts);
  if (got !== 'failed') return from - base + got;
  const sector = source.sectorSize;
  if (to - from <= sector) {
    view.fill(0);
    unreadable.push([from, to - from]);
    return to - base;
  }
  // Split on a sector boundary so each half is whole sectors (the last may be partial at the end of the image).
  const sectors = Math.ceil((to - from) / sector);
  const mid = from + Math.floor(sectors / 2) * sector;
  const firstEnd = await narrow(source, buf, base, from, mid, attempts, unreadable);
  if (firstEnd < mid - base) return firstEnd; // the image ended inside the first half
  return await narrow(source, buf, base, mid, to, attempts, unreadable);
}

export function mergeRanges(ranges: [number, number][]): [number, number][] {
  const sorted = [...ranges].sort((a, b) => a[0] - b[0]);
  const out: [number, number][] = [];
  for (const [off, len] of sorted) {
    const last = out[out.length - 1];
    if (last && last[0] + last[1] >= off) last[1] = Math.max(last[1], off + len - last[0]);
    else out.push([off, len]);
  }
  return out;
}
