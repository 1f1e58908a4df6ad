import test from 'ava';
import { packsOf, workloadOf } from '../../bench/lib/storage-layout.js';

test('objects are joined in order into packs that each reach the pack size, the rest in a last smaller one', (t) => {
  t.deepEqual(packsOf([6, 5, 10, 1, 3, 4], 10), [[0, 1], [2], [3, 4, 5]]);
  t.deepEqual(packsOf([3, 3], 10), [[0, 1]]);
  t.deepEqual(packsOf([], 10), []);
});

test('every object lands in exactly one pack', (t) => {
  const { sizes } = workloadOf(500, 640);
  const packs = packsOf(sizes);
  t.deepEqual(
    packs.flat(),
    sizes.map((_, i) => i),
  );
  for (const pack of packs.slice(0, -1))
    t.true(pack.reduce((sum, i) => sum + sizes[i], 0) >= 16 * 1024 * 1024);
});

test('object sizes spread from a quarter to 1.75 times the mean, averaging about the mean; names look like chunk names', (t) => {
  const { names, sizes } = workloadOf(4000, 640);
  const mean = sizes.reduce((a, b) => a + b, 0) / sizes.length;
  t.true(Math.min(...sizes) >= 160 * 1024);
  t.true(Math.max(...sizes) <= 1120 * 1024);
  t.true(Math.abs(mean - 640 * 1024) < 0.03 * 640 * 1024, `mean ${mean}`);
  t.is(new Set(names).size, names.length);
  for (const name of names) t.regex(name, /^[0-9a-f]{64}$/);
  t.deepEqual(workloadOf(10, 640), workloadOf(10, 640));
});
