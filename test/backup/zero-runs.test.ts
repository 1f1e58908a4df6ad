import { createHash } from 'node:crypto';
import test from 'ava';
import { cutOffsets } from '../../agent/backup/fastcdc-direct.js';
import type { CutFunction } from '../../agent/backup/window-cutter.js';
import { isZero, nextZeroRun, zeroRunCutter } from '../../agent/backup/zero-runs.js';

const PARAMS = [
  { min: 16 * 1024, avg: 64 * 1024, max: 256 * 1024 },
  { min: 256 * 1024, avg: 1024 * 1024, max: 4 * 1024 * 1024 },
];

/** Deterministic noise (xorshift32 from a hash of the seed): cheap enough for tens of MiB per case. */
function random(seed: string, n: number): Buffer {
  const out = Buffer.alloc(Math.ceil(n / 4) * 4);
  let x = createHash('sha256').update(seed).digest().readUInt32LE(0) || 1;
  for (let at = 0; at < out.length; at += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out.writeInt32LE(x | 0, at);
  }
  return out.subarray(0, n);
}

/** Random data with zero runs of the given lengths at the given offsets (later ones overwrite). */
function withZeros(seed: string, n: number, runs: [number, number][]): Buffer {
  const b = random(seed, n);
  for (const [at, len] of runs) b.fill(0, at, Math.min(n, at + len));
  return b;
}

/** `cut` that counts the bytes it is given. */
function counting(cut: CutFunction): { cut: CutFunction; bytes: () => number } {
  let bytes = 0;
  return {
    cut: (b, min, avg, max) => {
      bytes += b.length;
      return cut(b, min, avg, max);
    },
    bytes: () => bytes,
  };
}

test('zero runs are found block by block', (t) => {
  const b = withZeros('z', 1 << 20, [
    [10_000, 20_000],
    [100_000, 300_000],
  ]);
  t.true(isZero(b, 10_000, 30_000));
  t.false(isZero(b, 10_000, 30_001));
  // The first block-aligned 64 KiB of zeros starts in the second run, at the first block inside it.
  t.is(nextZeroRun(b, 0, 64 * 1024), 102_400);
  t.is(nextZeroRun(b, 0, 16 * 1024), 12_288);
  t.is(nextZeroRun(b, 400_000, 4096), b.length);
});

for (const p of PARAMS) {
  const { min, avg, max } = p;
  const tag = `${avg >> 10} KiB`;
  test(`[${tag}] the cuts are fastcdc's over every mix of data and zero runs`, (t) => {
    const zr = zeroRunCutter(cutOffsets);
    const n = 12 * max + 12_345;
    const cases: [string, Buffer][] = [
      ['random', random('r', n)],
      ['zeros', Buffer.alloc(n)],
      ['zeros, then random', withZeros('a', n, [[0, 5 * max + 77]])],
      ['random, then zeros to the end', withZeros('b', n, [[3 * max + 5, n]])],
      ['zeros ending less than max before the end', withZeros('c', n, [[0, n - max + 1000]])],
    ];
    for (const len of [max / 2, max - 1, max, max + 1, 2 * max, 2 * max + 4097, 3 * max + 1]) {
      for (const at of [0, 1, 4096, max + 333, 5 * max - 1]) {
        cases.push([
          `a run of ${len} at ${at}`,
          withZeros(`${len}/${at}`, n, [
            [at, len],
            [at + len + min, len],
          ]),
        ]);
      }
    }
    for (const [what, bytes] of cases) {
      t.deepEqual(Array.from(zr(bytes, min, avg, max)), Array.from(cutOffsets(bytes, min, avg, max)), what);
    }
  });

  test(`[${tag}] a long zero run is stepped over, not fed to the chunker`, (t) => {
    const bytes = withZeros('long', 40 * max, [[3 * max + 100, 30 * max]]);
    const spy = counting(cutOffsets);
    const cuts = zeroRunCutter(spy.cut)(bytes, min, avg, max);
    t.deepEqual(Array.from(cuts), Array.from(cutOffsets(bytes, min, avg, max)));
    // The data around the run, plus at most 2 × max of zeros on each side and the one zero-cut probe.
    t.true(spy.bytes() <= 10 * max + 4 * max + 2 * max, `${spy.bytes()} bytes went through the chunker`);
    t.true(spy.bytes() < bytes.length / 2);
  });
}

for (const p of PARAMS) {
  const { min, avg, max } = p;
  const tag = `${avg >> 10} KiB`;
  test(`[${tag}] short ranges and zero tails shorter than max are cut like fastcdc, without it once zeros are learnt`, (t) => {
    const spy = counting(cutOffsets);
    const zr = zeroRunCutter(spy.cut);
    // The first zero chunk teaches the cutter fastcdc's cut over max zeros (one probe of max bytes).
    t.deepEqual(
      Array.from(zr(Buffer.alloc(max), min, avg, max)),
      Array.from(cutOffsets(Buffer.alloc(max), min, avg, max)),
    );
    const learnt = spy.bytes();
    t.is(learnt, max);
    const tails = [1, min - 1, min, min + 1, avg, max - 4097, max - 1];
    for (const n of tails) {
      // all zeros, shorter than max: a window's carry in free space
      const zeros = Buffer.alloc(n);
      t.deepEqual(
        Array.from(zr(zeros, min, avg, max)),
        Array.from(cutOffsets(zeros, min, avg, max)),
        `${n} zeros`,
      );
      // max zeros and then such a tail
      const longer = Buffer.alloc(max + n);
      t.deepEqual(
        Array.from(zr(longer, min, avg, max)),
        Array.from(cutOffsets(longer, min, avg, max)),
        `max + ${n} zeros`,
      );
      // data, then a zero tail: the data goes to fastcdc, the tail need not
      const mixed = withZeros(`tail ${n}`, max + n, [[max, n]]);
      t.deepEqual(
        Array.from(zr(mixed, min, avg, max)),
        Array.from(cutOffsets(mixed, min, avg, max)),
        `data + ${n} zeros`,
      );
      // short data ranges of every kind still go through fastcdc
      const data = random(`short ${n}`, n);
      t.deepEqual(
        Array.from(zr(data, min, avg, max)),
        Array.from(cutOffsets(data, min, avg, max)),
        `${n} random`,
      );
    }
    // Only the ranges holding data went through fastcdc (data then a tail: all of it, one call), none of the
    // zero ranges.
    t.is(
      spy.bytes() - learnt,
      tails.reduce((sum, n) => sum + max + n + n, 0),
    );
  });
}
