import type { ChunkerParams } from '../../repo-engine/manifest-codec.js';
import type { PreviousSlice } from './previous-manifest.js';
import { acceptCuts } from './streaming-cuts.js';

/**
 * Cuts one window into chunks, skipping fastcdc wherever the disk is unchanged since the previous snapshot.
 *
 * Why that is exact: fastcdc's cut at the end of a chunk [a, b) depends only on the bytes [a, b) and on
 * min(bytes left in the image from a, max) (see streaming-cuts.ts). So standing at a true chunk boundary a,
 * if the previous image had a chunk [a, a+L) with id X, min(left, max) is the same in both images, and the
 * bytes [a, a+L) hash to X now, full CDC would cut exactly there again: the chunk is accepted, and its id is
 * already computed. Where the hash differs, fastcdc runs from a over a short span, growing while nothing
 * matches, and each cut it makes that lands on a boundary of the previous image is tried the same way.
 * The result is bit-identical to one fastcdc pass over the whole image (test/backup/streaming-cuts.test.ts).
 */
export interface WindowCutJob {
  /** Window bytes; [from, to) is to be cut, `from` being a true chunk boundary. */
  buf: Uint8Array;
  from: number;
  to: number;
  /** `to` is the end of the image. */
  final: boolean;
  /** Image offset of buf[from]. */
  imageOffset: number;
  /** The image's size when the source knows it (a file, a device), null for a pipe. */
  imageSize: number | null;
  chunker: ChunkerParams;
  /** The previous snapshot's chunks starting in this range, or null to cut everything with fastcdc. */
  previous: PreviousSlice | null;
}

export interface WindowCut {
  /** Chunk ends (buf coordinates), in order. */
  ends: number[];
  /** ids[i] is chunk i's id when the fast path already computed it, else null (still to be hashed). */
  ids: (Uint8Array | null)[];
  /** Where the first chunk that could not be decided yet starts: [carryFrom, to) goes to the next window. */
  carryFrom: number;
  /** Bytes accepted without running fastcdc. */
  reusedBytes: number;
}

export type CutFunction = (bytes: Uint8Array, min: number, avg: number, max: number) => ArrayLike<number>;
export type IdFunction = (bytes: Uint8Array) => Uint8Array;

export function cutWindow(job: WindowCutJob, cut: CutFunction, chunkId: IdFunction): WindowCut {
  const { buf, to, final, previous: prev } = job;
  const { avg, max } = job.chunker;
  const ends: number[] = [];
  const ids: (Uint8Array | null)[] = [];
  let reusedBytes = 0;
  // Without a previous image every byte goes through fastcdc: cut the whole window in one call.
  const firstSpan = prev ? 2 * avg : to - job.from;
  let span = firstSpan;
  /** Some cut since the last fastcdc call fell on a boundary of the previous image. */
  let aligned = false;
  /** Cuts fastcdc made from the current position on, still to be taken. */
  let pending: number[] = [];
  let next = 0;
  let k = 0;
  let p = job.from;
  while (p < to) {
    let guess: Uint8Array | null = null;
    let guessEnd = -1;
    if (prev) {
      const a = job.imageOffset + (p - job.from);
      while (k < prev.starts.length && prev.starts[k] < a) k++;
      if (k < prev.starts.length && prev.starts[k] === a) {
        aligned = true;
        const len = prev.ends[k] - a;
        // fastcdc sees min(bytes left, max) of each image: it must be the same in both, and known now.
        const left = bytesLeft(job, p);
        // A pipe has not told yet whether its image ends within max bytes of p: the next window will, and the
        // bytes from p (a true boundary, fewer than max) fit its carry. Cutting them here would run fastcdc
        // over them only for its last cut to be carried anyway.
        if (left === null) break;
        // (A chunk over max cannot come from fastcdc; the carry could not hold it either.)
        const sameBounds = len <= max && Math.min(left, max) === Math.min(prev.imageSize - a, max);
        // Last night's chunk runs past this window: check it in the next one rather than cut it here (p is a
        // true boundary, and to - p < len <= max fits the carry).
        if (sameBounds && p + len > to && !final) break;
        if (sameBounds) {
          const id = chunkId(buf.subarray(p, p + len));
          if (equal32(id, prev.ids, k * 32)) {
            ends.push(p + len);
            ids.push(id);
            reusedBytes += len;
            p += len;
            pending = [];
            next = 0;
            continue;
          }
          // Not last night's bytes; fastcdc may still cut at the same place, and then this is the id.
          guess = id;
          guessEnd = p + len;
        }
      }
    }
    if (next >= pending.length) {
      // While cuts keep meeting last night's boundaries (an edit in place), the span ends just past the next
      // one, so fastcdc reads no further than the chunk the fast path resumes after; growing spans when they
      // do not (data shifted), which ends in plain windowed CDC.
      if (aligned && prev) {
        const target = guessEnd > p ? guessEnd : nextBoundary(prev, k, job, p);
        span = target === null ? firstSpan : target - p + job.chunker.min;
      } else span = Math.min(2 * span, to - job.from);
      aligned = false;
      pending = cutSpan(buf, p, to, final, span, job.chunker, cut);
      next = 0;
      if (pending.length === 0) break;
    }
    const end = pending[next++];
    ends.push(end);
    ids.push(end === guessEnd ? guess : null);
    p = end;
  }
  return { ends, ids, carryFrom: p, reusedBytes };
}

/**
 * The first boundary of the previous image (a chunk start, or its end) at least `min` bytes after buffer
 * position p, as a buffer position, or null when the slice has none: where fastcdc's next cut most likely
 * falls. `k` indexes the first previous chunk starting at or after p.
 */
function nextBoundary(prev: PreviousSlice, k: number, job: WindowCutJob, p: number): number | null {
  const a = job.imageOffset + (p - job.from) + job.chunker.min;
  let j = k;
  while (j < prev.starts.length && prev.starts[j] < a) j++;
  const b = j < prev.starts.length ? prev.starts[j] : prev.ends[prev.ends.length - 1];
  return b === undefined || b < a ? null : job.from + (b - job.imageOffset);
}

/** Bytes from p to the end of the image, or null when that is not known yet and could matter (< max). */
function bytesLeft(job: WindowCutJob, p: number): number | null {
  if (job.final) return job.to - p;
  if (job.imageSize !== null) return job.imageSize - (job.imageOffset + (p - job.from));
  return job.to - p >= job.chunker.max ? job.to - p : null;
}

/** The cuts fastcdc makes from p that are certain, trying a span of `span` bytes, then of max if none was. */
function cutSpan(
  buf: Uint8Array,
  p: number,
  to: number,
  final: boolean,
  span: number,
  chunker: ChunkerParams,
  cut: CutFunction,
): number[] {
  const { min, avg, max } = chunker;
  for (const length of [span, max]) {
    const end = Math.min(to, p + length);
    const last = end === to && final;
    const accepted = acceptCuts(cut(buf.subarray(p, end), min, avg, max), p, end, max, last).ends;
    // A span that ends before `to` with no cut inside only proves nothing yet; a span of max always decides.
    if (accepted.length > 0 || end === to) return accepted;
  }
  return [];
}

function equal32(a: Uint8Array, b: Uint8Array, at: number): boolean {
  for (let i = 0; i < 32; i++) if (a[i] !== b[at + i]) return false;
  return true;
}
