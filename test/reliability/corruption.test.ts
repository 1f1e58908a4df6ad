import { open, readFile } from 'node:fs/promises';
import path from 'node:path';
import test from 'ava';
import { DiskvaultClient } from '../../agent/client.js';
import { readSnapshot, storedChunkFile } from '../helpers/backup-e2e.js';
import {
  backupCli,
  type Conn,
  dv,
  hasStackTrace,
  removeDir,
  summaryOf,
  tempDir,
  verifyCli,
} from '../helpers/reliability-harness.js';
import { writeImage } from '../helpers/reliability-images.js';
import { startTestServer, type TestServer } from '../helpers/server.js';

/**
 * One byte of one stored chunk flips on disk. verify --read-data names the chunk and every snapshot that
 * uses it; a restore of such a snapshot fails loudly, and with --continue-on-error finishes, still fails,
 * and names exactly the damaged byte ranges, every other byte being right.
 */
let dir: string;
let srv: TestServer;
let conn: Conn;
const snaps: { id: string; image: string; ranges: [number, number][] }[] = [];
let victim: string;
let unrelated: string;

test.before(async () => {
  dir = await tempDir('corruption');
  const dataDir = path.join(dir, 'data');
  srv = await startTestServer({ dataDir });
  conn = { server: srv.url, token: srv.adminToken };
  const entriesOf: Record<string, { id: string; length: number }[]> = {};
  const client = new DiskvaultClient({ server: srv.url, token: srv.adminToken });
  for (const [host, seed, night] of [
    ['oscar', 'oscar', 0],
    ['oscar', 'oscar', 1],
    ['papa', 'papa', 0],
  ] as const) {
    const image = path.join(dir, `${seed}-${night}.img`);
    await writeImage(image, { seed, sizeMiB: 12, night, changePercent: 10 });
    const r = await backupCli(conn, image, host, 'sda');
    if (r.code !== 0) throw new Error(r.stderr);
    const id = summaryOf(r).snapshot;
    entriesOf[id] = (await readSnapshot(client, id)).entries;
    snaps.push({ id, image, ranges: [] });
  }
  client.close();
  // A chunk both oscar snapshots use, that is not all zeros (a zero chunk may never be fetched).
  const [a, b, p] = snaps.map((s) => entriesOf[s.id]);
  const inB = new Set(b.map((e) => e.id));
  const inP = new Set(p.map((e) => e.id));
  const images = await Promise.all(snaps.slice(0, 1).map((s) => readFile(s.image)));
  let offset = 0;
  for (const e of a) {
    const bytes = images[0].subarray(offset, offset + e.length);
    offset += e.length;
    if (inB.has(e.id) && !inP.has(e.id) && bytes.some((x) => x !== 0)) {
      victim = e.id;
      break;
    }
  }
  if (!victim) throw new Error('no shared chunk to corrupt');
  unrelated = snaps[2].id;
  for (const s of snaps) {
    let at = 0;
    for (const e of entriesOf[s.id]) {
      if (e.id === victim) {
        const last = s.ranges[s.ranges.length - 1];
        if (last && last[0] + last[1] === at) last[1] += e.length;
        else s.ranges.push([at, e.length]);
      }
      at += e.length;
    }
  }
  // Corruption at rest: flip one byte in the middle of the stored object, with the server stopped so no
  // cache holds the good copy.
  await srv.stop();
  const fh = await open(await storedChunkFile(dataDir, victim), 'r+');
  try {
    const { size } = await fh.stat();
    const one = Buffer.alloc(1);
    await fh.read(one, 0, 1, Math.floor(size / 2));
    one[0] ^= 0x5a;
    await fh.write(one, 0, 1, Math.floor(size / 2));
  } finally {
    await fh.close();
  }
  srv = await startTestServer({ dataDir });
  conn = { server: srv.url, token: srv.adminToken };
});

test.after.always(async () => {
  await srv?.stop();
  if (dir) await removeDir(dir);
});

test.serial('verify --read-data names the corrupted chunk and every snapshot that uses it', async (t) => {
  const { code, report } = await verifyCli(conn);
  t.is(code, 1);
  t.false(report.ok);
  t.is(report.problems.length, 1, JSON.stringify(report.problems));
  const [p] = report.problems;
  t.is(p.chunk, victim);
  t.is(p.kind, 'corrupt');
  t.deepEqual([...p.snapshots].sort(), [snaps[0].id, snaps[1].id].sort());
  t.false(p.snapshots.includes(unrelated));

  const human = await dv(['verify', '--read-data'], conn);
  t.is(human.code, 1);
  t.true(human.stdout.includes(victim), human.stdout);
  t.true(human.stdout.includes(snaps[0].id) && human.stdout.includes(snaps[1].id), human.stdout);
});

test.serial(
  'restore of a snapshot using the corrupted chunk fails loudly, names the chunk, and does not claim success',
  async (t) => {
    const out = path.join(dir, 'strict.img');
    const r = await dv(['restore', snaps[1].id, out, '--json'], conn);
    t.false(r.timedOut, 'a failed restore exits instead of hanging');
    t.is(r.code, 1, r.stderr);
    t.true(r.stderr.includes(victim), r.stderr);
    t.false(hasStackTrace(r.stderr), r.stderr);
  },
);

test.serial(
  'restore --continue-on-error finishes, exits 1, names exactly the damaged byte ranges, and every other byte is right',
  async (t) => {
    for (const s of snaps.slice(0, 2)) {
      const out = path.join(dir, `lenient-${s.id.slice(0, 8)}.img`);
      const r = await dv(['restore', s.id, out, '--continue-on-error', '--json'], conn);
      t.is(r.code, 1, 'a restore with damage never exits 0');
      const summary = summaryOf(r) as unknown as { damaged: [number, number][]; verified: boolean };
      t.deepEqual(summary.damaged, s.ranges);
      t.false(summary.verified);
      for (const [off, len] of s.ranges)
        t.true(r.stderr.includes(String(off)) && r.stderr.includes(String(len)), r.stderr);
      const got = await readFile(out);
      const want = await readFile(s.image);
      t.is(got.length, want.length);
      for (const [off, len] of s.ranges) {
        t.true(
          got.subarray(off, off + len).every((x) => x === 0),
          'a damaged range is zeros',
        );
        want.fill(0, off, off + len);
      }
      t.true(got.equals(want), 'every byte outside the damaged ranges is the original');
    }
  },
);

test.serial('a snapshot that does not use the corrupted chunk still restores bit-exact', async (t) => {
  const out = path.join(dir, 'unrelated.img');
  const r = await dv(['restore', unrelated, out, '--json'], conn);
  t.is(r.code, 0, r.stderr);
  t.true((await readFile(out)).equals(await readFile(snaps[2].image)));
});
