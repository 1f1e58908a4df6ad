import test from 'ava';
import { changedBlockBytes, DedupLedger } from '../../bench/lib/dedup.js';

test('a chunk is new once across nights; only new chunks are compressed, and stored at the smaller size', (t) => {
  const ledger = new DedupLedger([1, 3]);
  let compressed = 0;
  const sizes = (stored: number[]) => () => {
    compressed++;
    return stored;
  };
  ledger.startNight('night0', null);
  t.true(ledger.chunk('a', 100, sizes([40, 30])));
  t.false(ledger.chunk('a', 100, sizes([40, 30])), 'the same id twice in one night is stored once');
  t.true(ledger.chunk('b', 50, sizes([60, 55])));
  ledger.zeroChunk();
  t.deepEqual(ledger.endNight(), {
    image: 'night0',
    chunks: 3,
    zeroChunks: 1,
    newChunks: 2,
    newRawBytes: 150,
    newStoredBytes: [90, 80],
    changedBytes: null,
  });
  ledger.startNight('night1', 4096);
  t.false(ledger.chunk('b', 50, sizes([60, 55])), 'a chunk of an earlier night is not new');
  t.true(ledger.chunk('c', 10, sizes([5, 4])));
  t.deepEqual(ledger.endNight(), {
    image: 'night1',
    chunks: 2,
    zeroChunks: 0,
    newChunks: 1,
    newRawBytes: 10,
    newStoredBytes: [5, 4],
    changedBytes: 4096,
  });
  t.is(compressed, 3);
  t.throws(() => ledger.chunk('d', 1, sizes([1, 1])), { message: /no night started/ });
});

test('changed bytes count whole blocks that differ, the last block as long as it is', (t) => {
  const a = Buffer.alloc(10_000);
  const b = Buffer.from(a);
  t.is(changedBlockBytes(a, b, 4096), 0);
  b[1] = 1;
  b[4095] = 1;
  t.is(changedBlockBytes(a, b, 4096), 4096);
  b[9_999] = 1;
  t.is(changedBlockBytes(a, b, 4096), 4096 + (10_000 - 8192));
  b[5000] = 1;
  t.is(changedBlockBytes(a, b, 4096), 10_000);
  t.is(changedBlockBytes(a.subarray(0, 100), b, 4096), 100, 'only the common length counts');
});
