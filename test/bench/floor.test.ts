import test from 'ava';
import { type NightWork, type Rates, stepFloors } from '../../bench/lib/floor.js';

const GB = 1e9;
/** Round rates so each term of a floor is easy to check by hand. */
const rates: Rates = {
  read: 10 * GB,
  fastcdc: 1 * GB,
  sha256: 2 * GB,
  zstdCompress: 0.5 * GB,
  zstdDecompress: 4 * GB,
  aesGcm: 8 * GB,
};

const night = (n: number, more: Partial<NightWork>): NightWork => ({
  night: n,
  imageBytes: 4 * GB,
  dataBytes: 2 * GB,
  newRawBytes: 2 * GB,
  newStoredBytes: 1 * GB,
  newZstdRawBytes: 1 * GB,
  snapshotRawBytes: 2 * GB,
  snapshotZstdRawBytes: 1 * GB,
  snapshotStoredBytes: 1.6 * GB,
  ...more,
});

test('a first backup cuts all its data; later nights cut only what is new; restore decodes the distinct chunks', (t) => {
  const [first, later, restore] = stepFloors(
    [night(0, {}), night(1, { newRawBytes: 0.5 * GB, newStoredBytes: 0.25 * GB, newZstdRawBytes: 0.5 * GB })],
    rates,
    2,
  );
  // read 4/10 + FastCDC 2/1 + ids 2/2 + image hash 4/2 + zstd 2/0.5 = 0.4 + 2 + 1 + 2 + 4
  t.is(first.agent.toFixed(3), '9.400');
  // decompress 1/4 + hash 2/2 + seal 1/8
  t.is(first.server.toFixed(3), '1.375');
  t.is(first.wall.toFixed(3), ((9.4 + 1.375) / 2).toFixed(3));
  // read 0.4 + FastCDC 0.5 + ids 1 + image hash 2 + zstd 1
  t.is(later.agent.toFixed(3), '4.900');
  // decompress 0.5/4 + hash 0.5/2 + seal 0.25/8
  t.is(later.server.toFixed(3), '0.406');
  t.is(restore.step, 'restore night1');
  // decompress 1/4 + hash 2/2 + image hash 4/2
  t.is(restore.agent.toFixed(3), '3.250');
  t.is(restore.server.toFixed(3), '0.200');
});

test('the wall floor is never below the one pass in image order, however many cores', (t) => {
  const [first] = stepFloors([night(0, {})], rates, 64);
  t.is(first.wall, 2);
});
