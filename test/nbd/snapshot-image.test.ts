import test from 'ava';
import { SnapshotImage } from '../../agent/nbd/snapshot-image.js';
import { buildImage, CHUNKER, openManifest, type TestImage } from '../restore/fixtures.js';

/** A source over the image's own chunks that counts what it was asked for. */
function memorySource(img: TestImage) {
  const chunks = new Map<string, Buffer>();
  let at = 0;
  for (const e of img.entries) {
    chunks.set(e.id, img.image.subarray(at, at + e.length));
    at += e.length;
  }
  const asked: string[] = [];
  const source = async (id: string, _length: number): Promise<Buffer> => {
    asked.push(id);
    await new Promise((r) => setImmediate(r));
    const raw = chunks.get(id);
    if (!raw) throw new Error(`chunk ${id} not found`);
    return Buffer.from(raw);
  };
  return { source, asked };
}

async function load(
  img: TestImage,
  source: (id: string, length: number) => Promise<Buffer>,
  cacheBytes?: number,
) {
  const reader = await openManifest(img);
  return await SnapshotImage.load(reader.header, reader.entryBatches(3), source, cacheBytes);
}

const image = () =>
  buildImage([
    { kind: 'random', length: 100_000 },
    { kind: 'zero', length: CHUNKER.max },
    { kind: 'text', length: 70_000 },
    { kind: 'random', length: 1 },
    { kind: 'random', length: 250_000 },
    { kind: 'text', length: 70_000 },
    { kind: 'zero', length: 5_000 },
    { kind: 'random', length: 33_333 },
  ]);

test('any byte range reads as the image: within a chunk, across several, the first and the last byte', async (t) => {
  const img = image();
  const { source } = memorySource(img);
  const disk = await load(img, source);
  t.is(disk.size, img.image.length);
  const ranges: [number, number][] = [
    [0, 1],
    [img.image.length - 1, 1],
    [0, img.image.length],
    [99_999, 2],
    [img.offsets[3], 1],
    [img.offsets[3] - 1, 3],
  ];
  for (let i = 0; i < 200; i++) {
    const length = 1 + Math.floor(Math.random() * 400_000);
    ranges.push([Math.floor(Math.random() * (img.image.length - length)), length]);
  }
  for (const [offset, length] of ranges) {
    const got = await disk.read(offset, length);
    t.true(got.equals(img.image.subarray(offset, offset + length)), `${offset}+${length}`);
  }
});

test('a maximum-length zero chunk is never downloaded; a chunk is downloaded once while it stays cached', async (t) => {
  const img = image();
  const { source, asked } = memorySource(img);
  const disk = await load(img, source);
  const zeroId = img.entries[1].id;
  await disk.read(img.offsets[1], CHUNKER.max);
  t.false(asked.includes(zeroId));
  await Promise.all([disk.read(0, 10), disk.read(50, 10), disk.read(99_990, 10)]);
  await disk.read(20, 10);
  t.is(
    asked.filter((id) => id === img.entries[0].id).length,
    1,
    'concurrent and later reads share one download',
  );
});

test('the same chunk at two places in the image is downloaded once', async (t) => {
  const img = buildImage([
    { kind: 'text', length: 70_000 },
    { kind: 'random', length: 1000 },
    { kind: 'text', length: 70_000 },
  ]);
  t.is(img.entries[0].id, img.entries[2].id);
  const { source, asked } = memorySource(img);
  const disk = await load(img, source);
  t.true((await disk.read(0, img.image.length)).equals(img.image));
  t.is(asked.filter((id) => id === img.entries[0].id).length, 1);
});

test('a manifest whose chunks do not add up to its size, or a chunk of the wrong length, is an error', async (t) => {
  const img = image();
  const { source } = memorySource(img);
  // The manifest codec itself refuses entries that do not add up to the header's size; a header that
  // promises more chunks than its entries hold is the case left to SnapshotImage.
  const one = buildImage([{ kind: 'random', length: 1000 }]);
  const reader = await openManifest(one);
  await t.throwsAsync(
    SnapshotImage.load({ ...reader.header, chunkCount: 2 }, reader.entryBatches(), source),
    {
      message: /lists 1 chunks of 1000 bytes, its header says 2 chunks of 1000/,
    },
  );
  const disk = await load(img, async (id, length) => (await source(id, length)).subarray(1));
  await t.throwsAsync(disk.read(0, 10), { message: /is 99999 bytes, the manifest says 100000/ });
  // A failed download is not remembered: the next read asks again.
  let fail = true;
  const flaky = await load(img, async (id, length) => {
    if (fail) throw new Error('network down');
    return await source(id, length);
  });
  await t.throwsAsync(flaky.read(0, 10), { message: 'network down' });
  fail = false;
  t.true((await flaky.read(0, 10)).equals(img.image.subarray(0, 10)));
});
