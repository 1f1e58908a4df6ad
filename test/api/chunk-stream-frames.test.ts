import test from 'ava';
import {
  FRAME_HEADER_BYTES,
  FrameError,
  type FrameHeader,
  FrameKind,
  FrameSplitter,
  readFrameHeader,
  writeFrameHeader,
} from '../../common/chunk-stream.js';

const idOf = (n: number) => Buffer.alloc(32, n);

function frame(kind: number, flags: number, payload: Buffer, id?: Buffer): Buffer {
  return Buffer.concat([
    writeFrameHeader(Buffer.alloc(FRAME_HEADER_BYTES), kind, flags, payload.length, id),
    payload,
  ]);
}

/** Splits `wire` delivered in pieces of `piece` bytes; returns every frame with its payload copied. */
function split(wire: Buffer, piece: number, accept: (h: FrameHeader) => void = () => {}) {
  const out: { kind: number; flags: number; id: string; payload: string }[] = [];
  const taken: number[] = [];
  const s = new FrameSplitter(
    accept,
    (n) => {
      taken.push(n);
      return Buffer.alloc(n + 7).subarray(0, n);
    },
    (h, p) => out.push({ kind: h.kind, flags: h.flags, id: h.id.toString('hex'), payload: p.toString() }),
  );
  for (let at = 0; at < wire.length; at += piece) s.push(wire.subarray(at, at + piece));
  return { out, taken, midFrame: s.midFrame };
}

test('a header round-trips, and one with nonzero reserved bytes is not a frame', (t) => {
  const h = writeFrameHeader(Buffer.alloc(64), FrameKind.Chunk, 1, 123456, idOf(9));
  t.is(h.length, FRAME_HEADER_BYTES);
  const r = readFrameHeader(h)!;
  t.deepEqual([r.kind, r.flags, r.length, r.id.toString('hex')], [1, 1, 123456, idOf(9).toString('hex')]);
  const bad = Buffer.from(h);
  bad[3] = 1;
  t.is(readFrameHeader(bad), undefined);
});

test('frames come out whole however the bytes are cut on the wire', (t) => {
  const wire = Buffer.concat([
    frame(FrameKind.Chunk, 0, Buffer.from('first payload'), idOf(1)),
    frame(FrameKind.Chunk, 1, Buffer.from('x'.repeat(1000)), idOf(2)),
    frame(FrameKind.End, 0, Buffer.alloc(0)),
  ]);
  const expected = [
    { kind: 1, flags: 0, id: idOf(1).toString('hex'), payload: 'first payload' },
    { kind: 1, flags: 1, id: idOf(2).toString('hex'), payload: 'x'.repeat(1000) },
    { kind: 2, flags: 0, id: Buffer.alloc(32).toString('hex'), payload: '' },
  ];
  for (const piece of [1, 3, 39, 40, 41, 100, wire.length]) {
    const r = split(wire, piece);
    t.deepEqual(r.out, expected, `pieces of ${piece}`);
    // Each payload is read into one buffer of its exact length, taken once per frame.
    t.deepEqual(r.taken, [13, 1000], `pieces of ${piece}`);
    t.false(r.midFrame);
  }
});

test('a cut mid-frame is reported, and a refused header stops before its payload is taken', (t) => {
  const wire = frame(FrameKind.Chunk, 0, Buffer.from('abcdef'), idOf(3));
  t.true(split(wire.subarray(0, 20), 7).midFrame);
  t.true(split(wire.subarray(0, 42), 7).midFrame);
  const refused = t.throws(() =>
    split(wire, 64, (h) => {
      if (h.length > 5) throw new Error(`too long: ${h.length}`);
    }),
  );
  t.is(refused?.message, 'too long: 6');
  const broken = Buffer.from(wire);
  broken[2] = 7;
  t.throws(() => split(broken, 64), { instanceOf: FrameError });
});

test('after stop, later bytes are ignored', (t) => {
  const seen: number[] = [];
  const s = new FrameSplitter(
    () => {},
    (n) => Buffer.alloc(n),
    (h) => seen.push(h.kind),
  );
  const wire = frame(FrameKind.Chunk, 0, Buffer.from('abc'), idOf(4));
  s.push(wire);
  s.stop();
  s.push(wire);
  t.deepEqual(seen, [1]);
});

test('a frame ends where its length says, whatever the length of the buffer it is read into', (t) => {
  const wire = Buffer.concat([
    frame(FrameKind.Chunk, 0, Buffer.from('first payload'), idOf(1)),
    frame(FrameKind.Chunk, 0, Buffer.from('second'), idOf(2)),
  ]);
  // An allocator handing out larger buffers (a recycler's size class): the payloads are cut to length.
  const out: string[] = [];
  const roomy = new FrameSplitter(
    () => {},
    (n) => Buffer.alloc(n + 100),
    (h, p) => out.push(`${h.id[0]}:${p.toString()}`),
  );
  roomy.push(wire);
  t.deepEqual(out, ['1:first payload', '2:second']);
  // One handing out a shorter buffer is refused before any byte goes into it.
  const short = new FrameSplitter(
    () => {},
    (n) => Buffer.alloc(n - 1),
    () => t.fail('no frame comes out'),
  );
  t.throws(() => short.push(wire), { message: /a payload buffer of 12 bytes for a frame of 13/ });
});
