import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, open, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import test from 'ava';
import { DB_PAGE } from '../../workloads/content.js';
import { buildExt4Nights } from '../../workloads/ext4-nights.js';

const run = promisify(execFile);
const SIZE = 32 * 2 ** 20;
const DB = '/var/lib/postgresql/16/main/base/16384/24576';

let work: string;
/** night0..night2 of seed 1, which the tests below examine. */
let images: string[];
test.before(async () => {
  work = await mkdtemp(join(tmpdir(), 'diskvault-workload-test-'));
  images = await buildExt4Nights(join(work, 'seed1'), { size: SIZE, nights: 2, seed: 1 });
});
test.after.always(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

async function sha256(path: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(path))
    .digest('hex');
}

async function debugfs(image: string, request: string): Promise<string> {
  return (await run('debugfs', ['-R', request, image], { maxBuffer: 64 * 2 ** 20, encoding: 'latin1' }))
    .stdout;
}

async function fileOf(image: string, path: string): Promise<Buffer> {
  return Buffer.from(await debugfs(image, `cat ${path}`), 'latin1');
}

test('the same seed builds the same bytes; another seed builds another disk', async (t) => {
  const again = await buildExt4Nights(join(work, 'again'), { size: SIZE, nights: 2, seed: 1 });
  const other = await buildExt4Nights(join(work, 'other'), { size: SIZE, nights: 0, seed: 8 });
  t.is(again.length, 3);
  for (const [n, image] of images.entries()) t.is(await sha256(again[n]), await sha256(image), `night${n}`);
  t.not(await sha256(other[0]), await sha256(images[0]));
});

test('every night is a clean ext4 filesystem of the asked size', async (t) => {
  for (const image of images) {
    await t.notThrowsAsync(run('e2fsck', ['-fn', image]), image);
    const fh = await open(image, 'r');
    try {
      t.is((await fh.stat()).size, SIZE);
    } finally {
      await fh.close();
    }
  }
});

test('a night rotates the logs, adds the day’s documents and rewrites database pages where they lie', async (t) => {
  const [night0, night1] = images;
  // logrotate: yesterday's syslog is today's syslog.1, byte for byte (renamed, not copied).
  t.deepEqual(await fileOf(night1, '/var/log/syslog.1'), await fileOf(night0, '/var/log/syslog'));
  t.notDeepEqual(await fileOf(night1, '/var/log/syslog'), await fileOf(night0, '/var/log/syslog'));
  t.regex(await debugfs(night1, 'ls /home/alice/Documents/night1'), /\.txt/);
  t.notRegex(await debugfs(night0, 'ls /home/alice'), /night1/);

  // The table file keeps its blocks; exactly the first two pages and 2 % of the others (at least 4) change.
  const blocks = await debugfs(night0, `blocks ${DB}`);
  t.is(await debugfs(night1, `blocks ${DB}`), blocks);
  const before = await fileOf(night0, DB);
  const after = await fileOf(night1, DB);
  t.is(after.length, before.length);
  const pages = before.length / DB_PAGE;
  const changed: number[] = [];
  for (let p = 0; p < pages; p++) {
    const at = p * DB_PAGE;
    if (!before.subarray(at, at + DB_PAGE).equals(after.subarray(at, at + DB_PAGE))) changed.push(p);
  }
  t.is(changed.length, Math.max(4, Math.round(pages * 0.02)) + 2);
  t.deepEqual(changed.slice(0, 2), [0, 1]);
});

test('text compresses and media does not, as on a real disk', async (t) => {
  const [night0] = images;
  const ratio = (b: Buffer) => b.length / gzipSync(b).length;
  const syslog = await fileOf(night0, '/var/log/syslog');
  t.true(ratio(syslog) > 3, `syslog compresses ${ratio(syslog).toFixed(2)}:1`);
  const pictures = (await debugfs(night0, 'ls -p /home/alice/Pictures'))
    .split('\n')
    .map((l) => l.split('/')[5])
    .filter((n) => n?.endsWith('.jpg'));
  t.true(pictures.length >= 1);
  const photo = await fileOf(night0, `/home/alice/Pictures/${pictures[0]}`);
  t.true(ratio(photo) < 1.01, `a photo compresses ${ratio(photo).toFixed(3)}:1`);
  const libs = (await debugfs(night0, 'ls -p /usr/lib/x86_64-linux-gnu'))
    .split('\n')
    .map((l) => l.split('/')[5])
    .filter((n) => n?.startsWith('lib'));
  const lib = await fileOf(night0, `/usr/lib/x86_64-linux-gnu/${libs[0]}`);
  t.is(lib.subarray(0, 4).toString('latin1'), '\x7fELF');
  t.true(ratio(lib) > 1.3 && ratio(lib) < 4, `a library compresses ${ratio(lib).toFixed(2)}:1`);
});
