import test from 'ava';
import {
  ENCODING_CODE,
  FETCH_FRAME_HEADER_BYTES,
  FetchFrameKind,
  FRAME_HEADER_BYTES,
  FrameError,
  type FrameHeader,
  FrameSplitter,
  readFrameHeader,
  writeFrameHeader,
} from '../../common/chunk-stream.js';

const idOf = (n: number) => Buffer.alloc(32, n);

function fetchFrame(kind: number, flags: number, payload: Buffer, id: Buffer | undefined, rawLength: number) {
  return Buffer.concat([
    writeFrameHeader(Buffer.alloc(FETCH_FRAME_HEADER_BYTES), kind, flags, payload.length, id, rawLength),
    payload,
  ]);
}

test('a fetch header is 44 bytes and carries the raw length after the common 40', (t) => {
  const h = writeFrameHeader(
    Buffer.alloc(64),
    FetchFrameKind.Chunk,
    ENCODING_CODE.zstd,
    5000,
    idOf(7),
    262144,
  );
  t.is(h.length, FETCH_FRAME_HEADER_BYTES);
  t.is(h.readUInt32LE(FRAME_HEADER_BYTES), 262144);
  const r = readFrameHeader(h, FETCH_FRAME_HEADER_BYTES)!;
  t.deepEqual(
    [r.kind, r.flags, r.length, r.id.toString('hex'), r.rawLength],
    [FetchFrameKind.Chunk, ENCODING_CODE.zstd, 5000, idOf(7).toString('hex'), 262144],
  );
  // The largest raw length a u32 holds round-trips; a 40-byte header reads as raw length 0.
  const big = writeFrameHeader(Buffer.alloc(44), FetchFrameKind.Request, 0, 0, idOf(1), 0xffffffff);
  t.is(readFrameHeader(big, FETCH_FRAME_HEADER_BYTES)!.rawLength, 0xffffffff);
  const plain = writeFrameHeader(Buffer.alloc(40), FetchFrameKind.Request, 0, 0, idOf(1));
  t.is(plain.length, FRAME_HEADER_BYTES);
  t.is(readFrameHeader(plain)!.rawLength, 0);
  // Too short for a fetch header: not a frame.
  t.is(readFrameHeader(plain, FETCH_FRAME_HEADER_BYTES), undefined);
  const bad = Buffer.from(h);
  bad[2] = 1;
  t.is(readFrameHeader(bad, FETCH_FRAME_HEADER_BYTES), undefined);
});

test('fetch frames come out whole however the bytes are cut, payloads into buffers chosen by header', (t) => {
  const wire = Buffer.concat([
    fetchFrame(FetchFrameKind.Request, 0, Buffer.alloc(0), idOf(1), 1000),
    fetchFrame(FetchFrameKind.Chunk, ENCODING_CODE.raw, Buffer.from('r'.repeat(1000)), idOf(1), 1000),
    fetchFrame(FetchFrameKind.Chunk, ENCODING_CODE.zstd, Buffer.from('compressed'), idOf(2), 70000),
    fetchFrame(FetchFrameKind.Error, 0, Buffer.from('{"status":404}'), idOf(3), 0),
    fetchFrame(FetchFrameKind.Done, 0, Buffer.alloc(0), undefined, 0),
  ]);
  const expected = [
    { kind: 1, flags: 0, id: idOf(1).toString('hex'), rawLength: 1000, payload: '' },
    { kind: 1, flags: 0, id: idOf(1).toString('hex'), rawLength: 1000, payload: 'r'.repeat(1000) },
    { kind: 1, flags: 1, id: idOf(2).toString('hex'), rawLength: 70000, payload: 'compressed' },
    { kind: 3, flags: 0, id: idOf(3).toString('hex'), rawLength: 0, payload: '{"status":404}' },
    { kind: 2, flags: 0, id: Buffer.alloc(32).toString('hex'), rawLength: 0, payload: '' },
  ];
  for (const piece of [1, 5, 40, 43, 44, 45, 97, wire.length]) {
    const out: typeof expected = [];
    const taken: [number, number][] = [];
    const s = new FrameSplitter(
      () => {},
      (n, h) => {
        taken.push([n, h.rawLength]);
        return Buffer.alloc(n);
      },
      (h: FrameHeader, p) =>
        out.push({
          kind: h.kind,
          flags: h.flags,
          id: h.id.toString('hex'),
          rawLength: h.rawLength,
          payload: p.toString(),
        }),
      FETCH_FRAME_HEADER_BYTES,
    );
    for (let at = 0; at < wire.length; at += piece) s.push(wire.subarray(at, at + piece));
    t.deepEqual(out, expected, `pieces of ${piece}`);
    // The allocator sees each payload's header (the raw length it bounds by) before its bytes.
    t.deepEqual(
      taken,
      [
        [1000, 1000],
        [10, 70000],
        [14, 0],
      ],
      `pieces of ${piece}`,
    );
    t.false(s.midFrame);
  }
});

test('a fetch splitter refuses a broken header and stops mid-frame on a refused one', (t) => {
  const wire = fetchFrame(FetchFrameKind.Chunk, 0, Buffer.from('abcdef'), idOf(3), 6);
  const seen: number[] = [];
  const refusing = new FrameSplitter(
    (h) => {
      if (h.rawLength < h.length) throw new Error('short');
      if (h.rawLength > 5) throw new Error(`raw ${h.rawLength} too long`);
    },
    (n) => Buffer.alloc(n),
    (h) => seen.push(h.kind),
    FETCH_FRAME_HEADER_BYTES,
  );
  t.throws(() => refusing.push(wire), { message: 'raw 6 too long' });
  t.deepEqual(seen, []);
  const broken = Buffer.from(wire);
  broken[3] = 9;
  const s = new FrameSplitter(
    () => {},
    (n) => Buffer.alloc(n),
    () => {},
    FETCH_FRAME_HEADER_BYTES,
  );
  t.throws(() => s.push(broken), { instanceOf: FrameError });
  const half = new FrameSplitter(
    () => {},
    (n) => Buffer.alloc(n),
    () => {},
    FETCH_FRAME_HEADER_BYTES,
  );
  half.push(wire.subarray(0, 42));
  t.true(half.midFrame);
});
