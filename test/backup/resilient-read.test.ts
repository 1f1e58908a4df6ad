import { randomBytes } from 'node:crypto';
import test from 'ava';
import {
  mergeRanges,
  readResilient,
  UnreadableBudget,
  UnreadableLimitError,
} from '../../agent/backup/resilient-read.js';
import { FailingSource } from '../helpers/failing-source.js';

const SECTOR = 512;

function expectedImage(data: Buffer, bad: [number, number][]): Buffer {
  const out = Buffer.from(data);
  for (const [o, l] of bad) out.fill(0, o, Math.min(o + l, data.length));
  return out;
}

test('a read error is narrowed to the bad sectors, which alone become zeros and are reported merged', async (t) => {
  const data = randomBytes(4 * 1024 * 1024);
  const bad: [number, number][] = [
    [0, SECTOR], // first sector of the disk
    [SECTOR * 1000, SECTOR * 3], // three adjacent sectors
    [SECTOR * 1003, SECTOR], // touching the previous range: must merge
    [SECTOR * 5001, SECTOR],
    [data.length - SECTOR, SECTOR], // last sector
  ];
  const source = new FailingSource(data, { bad });
  const buf = Buffer.alloc(data.length, 0xee);
  const out = await readResilient(source, buf, 0);
  t.is(out.bytes, data.length);
  t.deepEqual(out.unreadable, [
    [0, SECTOR],
    [SECTOR * 1000, SECTOR * 4],
    [SECTOR * 5001, SECTOR],
    [data.length - SECTOR, SECTOR],
  ]);
  t.true(buf.equals(expectedImage(data, bad)));
});

test('a budget shared by reads stops them once more than its limit is unreadable, naming the first bad byte', async (t) => {
  const data = randomBytes(4 * 1024 * 1024);
  const budget = new UnreadableBudget(SECTOR * 4, '2 KiB');
  // Four bad sectors in the first read fit the budget exactly.
  const first = new FailingSource(data, { bad: [[SECTOR * 10, SECTOR * 4]] });
  const out = await readResilient(first, Buffer.alloc(1024 * 1024), 0, { budget });
  t.deepEqual(out.unreadable, [[SECTOR * 10, SECTOR * 4]]);
  // A source that fails everywhere (gone) is given up on at the fifth sector, not narrowed to the end.
  const gone = new FailingSource(data, { bad: [[0, data.length]] });
  const err = await t.throwsAsync(
    readResilient(gone, Buffer.alloc(1024 * 1024), 2 * 1024 * 1024, { budget }),
    {
      instanceOf: UnreadableLimitError,
    },
  );
  t.regex(
    err!.message,
    /^more than 2 KiB of the image could not be read \(2560 bytes so far, the first at byte 5120\)/,
  );
  t.regex(err!.message, /Nothing was committed/);
  t.true(gone.reads < 100, `gave up after ${gone.reads} reads`);
});

test('narrowing works at an offset inside the image and with 4096-byte sectors', async (t) => {
  const data = randomBytes(2 * 1024 * 1024);
  const bad: [number, number][] = [[4096 * 300, 4096]];
  const source = new FailingSource(data, { bad, sectorSize: 4096 });
  const from = 1024 * 1024;
  const buf = Buffer.alloc(1024 * 1024);
  const out = await readResilient(source, buf, from);
  t.is(out.bytes, buf.length);
  t.deepEqual(out.unreadable, [[4096 * 300, 4096]]);
  t.true(buf.equals(expectedImage(data, bad).subarray(from, from + buf.length)));
});

test('a window reaching past the end of the image reports only the bytes the image has', async (t) => {
  const data = randomBytes(100 * SECTOR + 100); // a partial last sector
  const bad: [number, number][] = [[100 * SECTOR, 100]];
  const source = new FailingSource(data, { bad });
  const buf = Buffer.alloc(1024 * 1024);
  const out = await readResilient(source, buf, 0);
  t.is(out.bytes, data.length);
  t.deepEqual(out.unreadable, [[100 * SECTOR, 100]]);
  t.true(buf.subarray(0, data.length).equals(expectedImage(data, bad)));
});

test('a sector that fails twice and then reads is retried, not zeroed', async (t) => {
  const data = randomBytes(1024 * 1024);
  const source = new FailingSource(data, { flaky: [[SECTOR * 7, SECTOR]], flakyFailures: 2 });
  const buf = Buffer.alloc(data.length);
  const out = await readResilient(source, buf, 0);
  t.deepEqual(out.unreadable, []);
  t.true(buf.equals(data));
});

test('a read error on a pipe fails with EIO instead of guessing', async (t) => {
  const data = randomBytes(64 * 1024);
  const source = new FailingSource(data, { bad: [[SECTOR, SECTOR]], seekable: false });
  const err = await t.throwsAsync(readResilient(source, Buffer.alloc(data.length), 0));
  t.is((err as NodeJS.ErrnoException).code, 'EIO');
  t.regex(err!.message, /piped image/);
});

test('errors other than medium errors are not swallowed', async (t) => {
  const source = new FailingSource(randomBytes(4096));
  source.read = async () => {
    throw Object.assign(new Error('permission denied'), { code: 'EACCES' });
  };
  const err = await t.throwsAsync(readResilient(source, Buffer.alloc(4096), 0));
  t.is((err as NodeJS.ErrnoException).code, 'EACCES');
});

test('mergeRanges joins overlapping and touching ranges and sorts them', (t) => {
  t.deepEqual(
    mergeRanges([
      [100, 10],
      [0, 10],
      [10, 5],
      [105, 20],
      [300, 1],
    ]),
    [
      [0, 15],
      [100, 25],
      [300, 1],
    ],
  );
});
