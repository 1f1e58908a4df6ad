import { DiskvaultError } from '../../common/errors.js';
import type { ImageSource } from '../source.js';

/**
 * Reads a range of the image without giving up on bad sectors. A failing read is retried; if it still
 * fails the range is halved (on sector boundaries) until single sectors remain, each tried again, and only
 * the sectors that cannot be read are left as zeros and reported. One bad sector costs a few dozen reads,
 * not the backup; a dead 16 MiB region costs about 4 reads a sector (131,095 for 512-byte sectors).
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
  /** Shared by every read of one backup: how much may be unreadable before the backup gives up. */
  budget?: UnreadableBudget;
}

/**
 * How many unreadable bytes a backup accepts. A failing disk has some bad sectors; a source where nearly
 * everything fails is gone (a disk that dropped off the bus, an LVM snapshot whose copy-on-write space ran
 * out): storing it as zeros would commit a snapshot of nothing, exit 3 like a disk with a few bad sectors,
 * and take days of sector-by-sector retries on the way. Past the limit the backup stops and commits nothing.
 */
export class UnreadableBudget {
  private spent = 0;
  private first: number | null = null;

  constructor(
    readonly limit: number,
    /** The limit as the user gave it ('1%', '64M'), for the message. */
    private readonly asGiven: string,
  ) {}

  spend(offset: number, bytes: number): void {
    this.spent += bytes;
    this.first = this.first === null ? offset : Math.min(this.first, offset);
    if (this.spent > this.limit) throw new UnreadableLimitError(this.spent, this.asGiven, this.first);
  }
}

export class UnreadableLimitError extends DiskvaultError {
  constructor(spent: number, asGiven: string, first: number) {
    super(
      'Unavailable',
      `more than ${asGiven} of the image could not be read (${spent} bytes so far, the first at byte ${first}): the disk is failing or the source went away (an LVM snapshot that ran out of space reads as errors). Nothing was committed. For a failing disk, copy it with ddrescue and back up the copy, or raise --max-unreadable to keep what can be read.`,
      { unreadableBytes: spent, firstUnreadable: first },
    );
    this.name = 'UnreadableLimitError';
  }
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
  const bytes = await narrow(source, buf, offset, offset, end, attempts, unreadable, opts.budget);
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
  budget: UnreadableBudget | undefined,
): Promise<number> {
  const view = buf.subarray(from - base, to - base);
  const sector = source.sectorSize;
  // Retries are for single sectors: a failing range is read again anyway, as its two halves, so retrying
  // it whole would only triple the reads of a large bad area (a third of the time a dead region takes).
  const got = await tryRead(source, view, from, to - from <= sector ? attempts : 1);
  if (got !== 'failed') return from - base + got;
  if (to - from <= sector) {
    budget?.spend(from, to - from);
    view.fill(0);
    unreadable.push([from, to - from]);
    return to - base;
  }
  // Split on a sector boundary so each half is whole sectors (the last may be partial at the end of the image).
  const sectors = Math.ceil((to - from) / sector);
  const mid = from + Math.floor(sectors / 2) * sector;
  const firstEnd = await narrow(source, buf, base, from, mid, attempts, unreadable, budget);
  if (firstEnd < mid - base) return firstEnd; // the image ended inside the first half
  return await narrow(source, buf, base, mid, to, attempts, unreadable, budget);
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
