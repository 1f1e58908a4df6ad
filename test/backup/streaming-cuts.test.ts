import { randomBytes } from 'node:crypto';
import test from 'ava';
import fastcdc from 'fastcdc-wasm';
import { acceptCuts } from '../../agent/backup/streaming-cuts.js';

/**
 * The pipeline's carry rule must give the same boundaries as one fastcdc call over the whole image, for any
 * window size. This replays exactly what agent/backup/backup.ts does: each window's fresh bytes sit after a
 * pad of `max` bytes, the previous window's carry is copied just before them, and the window is cut from
 * there.
 */
function whole(data: Buffer, min: number, avg: number, max: number): number[] {
  const offsets = fastcdc.get_chunks(data, min, avg, max);
  return Array.from(offsets).slice(1);
}

function streamed(data: Buffer, window: number, min: number, avg: number, max: number): number[] {
  const pad = max;
  const slot = Buffer.alloc(pad + window);
  const prevSlot = Buffer.alloc(pad + window);
  const ends: number[] = [];
  let carry = Buffer.alloc(0);
  let offset = 0; // image offset of the first fresh byte in the current window
  for (;;) {
    const fresh = Math.min(window, data.length - offset);
    data.copy(slot, pad, offset, offset + fresh);
    const eof = fresh < window || offset + fresh >= data.length;
    carry.copy(slot, pad - carry.length);
    const from = pad - carry.length;
    const to = pad + fresh;
    const imageAt = (slotPos: number) => offset + (slotPos - pad);
    if (to > from) {
      const cut = acceptCuts(fastcdc.get_chunks(slot.subarray(from, to), min, avg, max), from, to, max, eof);
      for (const e of cut.ends) ends.push(imageAt(e));
      slot.copy(prevSlot);
      carry = Buffer.from(prevSlot.subarray(cut.carryFrom, to));
    }
    offset += fresh;
    if (eof) break;
  }
  return ends;
}

/** Text-like and sparse structure: long zero runs, repeated blocks, and random stretches. */
function structured(size: number): Buffer {
  const out = Buffer.alloc(size);
  const block = randomBytes(48 * 1024);
  let at = 0;
  let kind = 0;
  while (at < size) {
    const len = Math.min(size - at, 20_000 + ((kind * 7919) % 150_000));
    if (kind % 3 === 1) randomBytes(len).copy(out, at);
    else if (kind % 3 === 2)
      for (let i = 0; i < len; i += block.length) block.copy(out, at + i, 0, Math.min(block.length, len - i));
    // kind % 3 === 0 stays zero, like free space
    at += len;
    kind++;
  }
  return out;
}

const MIN = 4 * 1024;
const AVG = 16 * 1024;
const MAX = 64 * 1024;

for (const [name, make] of [
  ['random', (n: number) => randomBytes(n)],
  ['structured', structured],
] as const) {
  test(`streamed cuts of ${name} data equal whole-buffer cuts for every window size`, (t) => {
    const data = make(3 * 1024 * 1024 + 12345);
    const expected = whole(data, MIN, AVG, MAX);
    // window sizes: exactly max, just over, odd sizes, a multiple of the data, and bigger than the data
    for (const window of [MAX, MAX + 1, 100_003, 256 * 1024, 1024 * 1024, 8 * 1024 * 1024]) {
      t.deepEqual(streamed(data, window, MIN, AVG, MAX), expected, `window ${window}`);
    }
  });
}

test('streamed cuts equal whole-buffer cuts when the image ends exactly on a window edge', (t) => {
  const data = structured(1024 * 1024);
  t.deepEqual(streamed(data, 256 * 1024, MIN, AVG, MAX), whole(data, MIN, AVG, MAX));
});

test('streamed cuts equal whole-buffer cuts with the production chunker parameters', (t) => {
  const data = structured(40 * 1024 * 1024);
  const [min, avg, max] = [256 * 1024, 1024 * 1024, 4 * 1024 * 1024];
  t.deepEqual(streamed(data, 5 * 1024 * 1024 + 7, min, avg, max), whole(data, min, avg, max));
});

test('a chunk starting less than max bytes before the window end is carried, not accepted', (t) => {
  // offsets as fastcdc reports them for bytes [100, 1100): cuts at +300, +700, end at +1000
  // chunk starts 100 and 400 have >= 500 bytes before the window end; the one at 800 has only 300
  const cut = acceptCuts([0, 300, 700, 1000], 100, 1100, 500, false);
  t.deepEqual(cut.ends, [400, 800]);
  t.is(cut.carryFrom, 800);
  const final = acceptCuts([0, 300, 700, 1000], 100, 1100, 500, true);
  t.deepEqual(final.ends, [400, 800, 1100]);
});
