import type { CutFunction } from './window-cutter.js';

/** Zero runs are looked for in steps of this many bytes (a disk's free space is zero in whole blocks). */
const BLOCK = 4096;
const ZEROS = Buffer.alloc(1 << 20);

/** Whether bytes[from, to) are all zero: memcmp against zeros, which stops at the first other byte. */
export function isZero(bytes: Uint8Array, from: number, to: number): boolean {
  for (let at = from; at < to; at += ZEROS.length) {
    const n = Math.min(ZEROS.length, to - at);
    if (Buffer.compare(Buffer.from(bytes.buffer, bytes.byteOffset + at, n), ZEROS.subarray(0, n)) !== 0)
      return false;
  }
  return true;
}

/**
 * The first block-aligned position p >= from at which `need` zero bytes begin, or bytes.length if there is
 * none. Blocks of other data cost one comparison each (it stops at their first nonzero byte).
 */
export function nextZeroRun(bytes: Uint8Array, from: number, need: number): number {
  let run = 0;
  let start = 0;
  for (let b = Math.ceil(from / BLOCK) * BLOCK; b + BLOCK <= bytes.length; b += BLOCK) {
    if (isZero(bytes, b, b + BLOCK)) {
      if (run === 0) start = b;
      run += BLOCK;
      if (run >= need) return start;
    } else run = 0;
  }
  return bytes.length;
}

/**
 * `cut` (fastcdc's cut points: 0, each cut, bytes.length) with its answer unchanged, but zero runs (the free
 * space of most disks) stepped over by a scan instead of fed through the chunker byte by byte.
 *
 * Why the answer is the same: from a chunk start s with at least max bytes left, fastcdc reads only
 * bytes[s, s + max) to choose the next cut (with exactly max bytes left it reads the same). Where those are
 * all zero, the cut is at s + Z, Z being its cut over max zeros (learned once per parameter set). Elsewhere
 * `cut` runs on a stretch reaching 2 × max past the next zero run (or to the end), and only the cuts of
 * chunks that saw max bytes ahead inside that stretch are kept: exactly fastcdc's over the whole range.
 * Fewer than max zeros left at the end of the range (a window's edge in free space) are cut as fastcdc cuts
 * the first bytes of max zeros, once Z is known: it scans them with the same masks and the same hash.
 */
export function zeroRunCutter(cut: CutFunction): CutFunction {
  const zeroCuts = new Map<string, number>();
  /** fastcdc's cut over max zero bytes, learned from the first such stretch met (no buffer of its own). */
  const zeroCut = (zeros: Uint8Array, min: number, avg: number, max: number): number => {
    const key = `${min}/${avg}/${max}`;
    let z = zeroCuts.get(key);
    if (z === undefined) {
      z = cut(zeros, min, avg, max)[1];
      zeroCuts.set(key, z);
    }
    return z;
  };
  return (bytes, min, avg, max) => {
    const length = bytes.length;
    const out: number[] = [0];
    let s = 0;
    /** bytes[zeroFrom, zeroTo) are known to be zero. */
    let zeroFrom = 0;
    let zeroTo = 0;
    const zeroThrough = (from: number, to: number): boolean => {
      if (from >= zeroFrom && from <= zeroTo) {
        if (to <= zeroTo) return true;
        if (!isZero(bytes, zeroTo, to)) return false;
        zeroTo = to;
        return true;
      }
      if (!isZero(bytes, from, to)) return false;
      zeroFrom = from;
      zeroTo = to;
      return true;
    };
    while (s < length) {
      if (length - s >= max && zeroThrough(s, s + max)) {
        s += zeroCut(bytes.subarray(s, s + max), min, avg, max);
        out.push(s);
        continue;
      }
      // Fewer than max zeros up to the end: fastcdc scans them as it scans the first bytes of max zeros, so it
      // cuts where it cuts those (if that is inside), else takes them all (as it does up to min).
      const z = zeroCuts.get(`${min}/${avg}/${max}`);
      if (z !== undefined && zeroThrough(s, length)) {
        const n = length - s;
        s += n > min && z <= n ? z : n;
        out.push(s);
        continue;
      }
      const run = nextZeroRun(bytes, s, 2 * max);
      const end = run >= length ? length : Math.min(length, Math.max(run, s) + 2 * max);
      const cuts = cut(bytes.subarray(s, end), min, avg, max);
      if (end === length) {
        for (let i = 1; i < cuts.length; i++) out.push(s + cuts[i]);
        break;
      }
      // A chunk starting at `start` saw max bytes ahead only if start + max <= end - s; its cut is then
      // fastcdc's over the whole range. The first always did (end - s >= 2 × max), so s moves on.
      let start = 0;
      for (let i = 1; i < cuts.length && start + max <= end - s; i++) {
        out.push(s + cuts[i]);
        start = cuts[i];
      }
      s += start;
    }
    return Uint32Array.from(out);
  };
}
