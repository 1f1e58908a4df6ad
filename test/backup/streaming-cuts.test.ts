import { createHash, randomBytes } from 'node:crypto';
import test from 'ava';
import fastcdc from 'fastcdc-wasm';
import { cutOffsets } from '../../agent/backup/fastcdc-direct.js';
import { PreviousManifest } from '../../agent/backup/previous-manifest.js';
import { acceptCuts } from '../../agent/backup/streaming-cuts.js';
import { cutWindow } from '../../agent/backup/window-cutter.js';
import { seededRandom } from '../helpers/engine-fixtures.js';

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

test('only a last chunk that ends at the window end without max bytes to search in is carried', (t) => {
  // offsets as fastcdc reports them for bytes [100, 1100): cuts at +300, +700, end at +1000
  // the cuts at 400 and 800 were found by the gear hash before the window end: they stand, even the one
  // starting at 400, which had fewer than max (500) bytes before the window end; the chunk at 800 ends at
  // the window end with only 300 bytes searched, so it is carried
  const cut = acceptCuts([0, 300, 700, 1000], 100, 1100, 500, false);
  t.deepEqual(cut.ends, [400, 800]);
  t.is(cut.carryFrom, 800);
  const final = acceptCuts([0, 300, 700, 1000], 100, 1100, 500, true);
  t.deepEqual(final.ends, [400, 800, 1100]);
  // a last chunk of a full max bytes stands: fastcdc cuts there whatever follows
  t.deepEqual(acceptCuts([0, 300, 800], 100, 900, 500, false).ends, [400, 900]);
});

test('the direct WASM cut gives the same offsets as the published get_chunks wrapper', (t) => {
  for (const size of [0, 1, 1000, 70_000, 3 * 1024 * 1024 + 5]) {
    const data = structured(size);
    const copy = Buffer.from(data);
    t.deepEqual(
      Array.from(cutOffsets(data, MIN, AVG, MAX)),
      Array.from(fastcdc.get_chunks(data, MIN, AVG, MAX)),
    );
    t.true(data.equals(copy), 'the input is left as it was');
  }
});

/** The previous snapshot's chunk map, as the server would send it for `data`. */
function manifestOf(data: Buffer, min: number, avg: number, max: number): PreviousManifest {
  const ends = whole(data, min, avg, max);
  const bounds = new Float64Array([0, ...ends]);
  const ids = new Uint8Array(ends.length * 32);
  ends.forEach((end, i) => {
    ids.set(sha(data.subarray(bounds[i], end)), i * 32);
  });
  return new PreviousManifest(bounds, ids, { min, avg, max });
}

/**
 * Bytes the fast path must reuse: every chunk of `now` that last night's image had too, at the same offset,
 * with the same bytes, and with the same min(bytes left, max) (the last max bytes of a resized image differ).
 */
function reusable(before: Buffer, now: Buffer, min: number, avg: number, max: number): number {
  const old = new Set<string>();
  let start = 0;
  for (const end of whole(before, min, avg, max)) {
    old.add(`${start}:${end}:${sha(before.subarray(start, end)).toString('hex')}`);
    start = end;
  }
  let bytes = 0;
  start = 0;
  for (const end of whole(now, min, avg, max)) {
    const same = old.has(`${start}:${end}:${sha(now.subarray(start, end)).toString('hex')}`);
    if (same && Math.min(now.length - start, max) === Math.min(before.length - start, max))
      bytes += end - start;
    start = end;
  }
  return bytes;
}

function sha(b: Uint8Array): Buffer {
  return createHash('sha256').update(b).digest();
}

/**
 * Replays the backup pipeline's cutting with the previous-manifest fast path: windows after a pad of max,
 * the carry copied in front, each window cut by cutWindow with the previous chunks starting in it.
 */
function streamedFast(
  data: Buffer,
  window: number,
  min: number,
  avg: number,
  max: number,
  previous: PreviousManifest | null,
  sizeKnown = true,
): { ends: number[]; reused: number; badIds: number; carries: { windowEnd: number; carryStart: number }[] } {
  const pad = max;
  let slot = Buffer.alloc(pad + window);
  let other = Buffer.alloc(pad + window);
  const ends: number[] = [];
  let reused = 0;
  let badIds = 0;
  const carries: { windowEnd: number; carryStart: number }[] = [];
  let carryFrom = pad;
  let carryEnd = pad;
  let offset = 0;
  for (;;) {
    const fresh = Math.min(window, data.length - offset);
    const carry = carryEnd - carryFrom;
    other.copy(slot, pad - carry, carryFrom, carryEnd);
    data.copy(slot, pad, offset, offset + fresh);
    const eof = fresh < window || offset + fresh >= data.length;
    const from = pad - carry;
    const to = pad + fresh;
    const imageOffset = offset - carry;
    const cut = cutWindow(
      {
        buf: slot,
        from,
        to,
        final: eof,
        imageOffset,
        imageSize: sizeKnown ? data.length : null,
        chunker: { min, avg, max },
        previous: previous?.slice(imageOffset, imageOffset + (to - from)) ?? null,
      },
      cutOffsets,
      sha,
    );
    let start = from;
    cut.ends.forEach((end, i) => {
      const id = cut.ids[i];
      if (id && !sha(slot.subarray(start, end)).equals(id)) badIds++;
      ends.push(imageAt(end));
      start = end;
    });
    function imageAt(pos: number) {
      return offset + (pos - pad);
    }
    reused += cut.reusedBytes;
    if (!eof) carries.push({ windowEnd: offset + fresh, carryStart: imageAt(cut.carryFrom) });
    [slot, other] = [other, slot];
    carryFrom = cut.carryFrom;
    carryEnd = to;
    offset += fresh;
    if (eof) break;
  }
  return { ends, reused, badIds, carries };
}

/**
 * Night-to-night edits: overwrites, zeroed runs, flipped bytes, edits at window edges, a new size; with
 * `shifting`, also insertions and deletions (which a block device never sees, but the cut must survive).
 */
function edit(base: Buffer, seed: number, window: number, shifting: boolean): Buffer {
  const rnd = seededRandom(seed);
  const pick = (n: number) => Math.floor(rnd() * n);
  let out = Buffer.from(base);
  for (let e = 0; e < 12; e++) {
    const at =
      e % 4 === 3
        ? Math.min(out.length - 1, Math.max(0, (1 + pick(3)) * window - 50 + pick(100)))
        : pick(out.length);
    const len = 1 + pick(e % 2 ? 200 : 40_000);
    switch (pick(shifting ? 5 : 3)) {
      case 0: // overwrite in place, like a block rewritten
        randomBytes(Math.min(len, out.length - at)).copy(out, at);
        break;
      case 1: // zero a run, like a freed and discarded extent
        out.fill(0, at, Math.min(out.length, at + len));
        break;
      case 2:
        out[at] ^= 0x5a;
        break;
      case 3:
        out = Buffer.concat([out.subarray(0, at), randomBytes(len), out.subarray(at)]);
        break;
      default:
        out = Buffer.concat([out.subarray(0, at), out.subarray(Math.min(out.length, at + len))]);
    }
  }
  // The disk grew or shrank a little: the last max bytes are cut differently then.
  const delta = pick(3) - 1;
  if (delta > 0) out = Buffer.concat([out, randomBytes(pick(100_000))]);
  if (delta < 0) out = out.subarray(0, out.length - pick(100_000));
  return out;
}

for (const seed of [1, 2, 3, 4, 5, 6, 7, 8]) {
  const shifting = seed > 6;
  test(`the previous-manifest fast path cuts ${shifting ? 'shifted' : 'edited'} data exactly like one whole-buffer pass (seed ${seed})`, (t) => {
    const rnd = seededRandom(seed * 7919);
    const base =
      seed % 2 ? structured(3 * 1024 * 1024 + Math.floor(rnd() * 50_000)) : randomBytes(2 * 1024 * 1024);
    const window = [MAX, MAX + 1, 100_003, 256 * 1024, 1024 * 1024][seed % 5];
    const previous = manifestOf(base, MIN, AVG, MAX);
    const edited = edit(base, seed, window, shifting);
    const expected = whole(edited, MIN, AVG, MAX);
    // a file or device (size known up front) and a pipe (size learnt at the end)
    for (const sizeKnown of [true, false]) {
      const got = streamedFast(edited, window, MIN, AVG, MAX, previous, sizeKnown);
      t.deepEqual(got.ends, expected, `size known: ${sizeKnown}`);
      t.is(got.badIds, 0, "every id the fast path hands over is the chunk's hash");
      // Every chunk that survived the night must come through the fast path, or it is not one: from a pipe
      // too, whose size is learnt only at its end.
      t.is(got.reused, reusable(base, edited, MIN, AVG, MAX), `size known: ${sizeKnown}`);
      if (!shifting) t.true(got.reused > 0);
    }
  });
}

test('the fast path reuses every chunk of an unchanged image and cuts identically', (t) => {
  const data = structured(3 * 1024 * 1024 + 777);
  const previous = manifestOf(data, MIN, AVG, MAX);
  for (const window of [MAX, 100_003, 1024 * 1024]) {
    // a file or device, and a pipe
    for (const sizeKnown of [true, false]) {
      const got = streamedFast(data, window, MIN, AVG, MAX, previous, sizeKnown);
      t.deepEqual(got.ends, whole(data, MIN, AVG, MAX));
      t.is(got.reused, data.length);
      // The chain starts the next window's cut from the carry last night's map predicts (cut-chain.ts): on
      // an unchanged disk the prediction must be right at every window, or each window is cut twice.
      for (const { windowEnd, carryStart } of got.carries)
        t.is(
          previous.carryStartAt(windowEnd, sizeKnown),
          carryStart,
          `window ${window} ending at ${windowEnd}, size known: ${sizeKnown}`,
        );
    }
  }
});

test('without a previous manifest the window cutter cuts like one whole-buffer pass', (t) => {
  const data = structured(3 * 1024 * 1024 + 12345);
  for (const window of [MAX, MAX + 1, 100_003, 1024 * 1024, 8 * 1024 * 1024]) {
    const got = streamedFast(data, window, MIN, AVG, MAX, null);
    t.deepEqual(got.ends, whole(data, MIN, AVG, MAX), `window ${window}`);
    t.is(got.reused, 0);
  }
});

test('the fast path on an image of a different size, or an all-zero image, still cuts like a whole pass', (t) => {
  const base = structured(2 * 1024 * 1024);
  const previous = manifestOf(base, MIN, AVG, MAX);
  // longer by less than max, shorter by less than max, and all zeros of the same size
  for (const data of [
    Buffer.concat([base, randomBytes(1000)]),
    base.subarray(0, base.length - 1000),
    Buffer.alloc(base.length),
  ]) {
    for (const window of [MAX, 300_001]) {
      t.deepEqual(streamedFast(data, window, MIN, AVG, MAX, previous).ends, whole(data, MIN, AVG, MAX));
    }
  }
});

test('the fast path with the production chunker parameters cuts like one whole-buffer pass', (t) => {
  const [min, avg, max] = [256 * 1024, 1024 * 1024, 4 * 1024 * 1024];
  const base = structured(40 * 1024 * 1024);
  const previous = manifestOf(base, min, avg, max);
  const edited = Buffer.from(base);
  randomBytes(5000).copy(edited, 7 * 1024 * 1024);
  edited.fill(0, 20 * 1024 * 1024, 21 * 1024 * 1024);
  randomBytes(100).copy(edited, 16 * 1024 * 1024 - 50);
  const got = streamedFast(edited, 16 * 1024 * 1024, min, avg, max, previous);
  t.deepEqual(got.ends, whole(edited, min, avg, max));
  t.is(got.reused, reusable(base, edited, min, avg, max));
  t.true(got.reused > 0);
});

test('a byte rewritten inside one chunk costs fastcdc that chunk and min bytes more, not a fixed span', (t) => {
  const [min, avg, max] = [256 * 1024, 1024 * 1024, 4 * 1024 * 1024];
  const base = randomBytes(16 * 1024 * 1024);
  const previous = manifestOf(base, min, avg, max);
  const before = whole(base, min, avg, max);
  // the chunk around the middle of the image, edited in its middle (fastcdc still cuts at its end)
  const k = before.findIndex((end) => end > 8 * 1024 * 1024);
  const [a, b] = [before[k - 1], before[k]];
  const edited = Buffer.from(base);
  edited[a + Math.floor((b - a) / 2)] ^= 0x5a;
  const expected = whole(edited, min, avg, max);
  t.deepEqual(expected, before, 'the edit moved no cut');
  let fed = 0;
  const counting = (bytes: Uint8Array, mn: number, av: number, mx: number) => {
    fed += bytes.length;
    return cutOffsets(bytes, mn, av, mx);
  };
  const got = cutWindow(
    {
      buf: edited,
      from: 0,
      to: edited.length,
      final: true,
      imageOffset: 0,
      imageSize: edited.length,
      chunker: { min, avg, max },
      previous: previous.slice(0, edited.length),
    },
    counting,
    sha,
  );
  t.deepEqual(got.ends, expected);
  t.is(got.reusedBytes, edited.length - (b - a));
  // fastcdc read the edited chunk (its first min bytes are skipped, the next chunk's first min are not read)
  t.is(fed, b - a + min);
});
