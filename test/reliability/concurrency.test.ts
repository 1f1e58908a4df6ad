import path from 'node:path';
import test from 'ava';
import {
  backupCli,
  type Conn,
  dv,
  hasStackTrace,
  listSnapshotsCli,
  removeDir,
  restoreCli,
  sleep,
  summaryOf,
  tempDir,
  verifyCli,
} from '../helpers/reliability-harness.js';
import { writeImage } from '../helpers/reliability-images.js';
import { startTestServer } from '../helpers/server.js';

/**
 * Four agents back up overlapping images (nights of one disk, so most chunks are shared) at the same time,
 * while an admin runs forget --prune and gc in a loop with no grace period. Every backup must succeed, and
 * every snapshot the retention kept must restore bit-exact: gc must never free a chunk a running backup
 * counted on.
 */
test('four agents backing up overlapping images while forget and gc loop: every kept snapshot restores bit-exact', async (t) => {
  const dir = await tempDir('concurrency');
  const srv = await startTestServer({ dataDir: path.join(dir, 'data'), gcGraceMs: 0 });
  const conn: Conn = { server: srv.url, token: srv.adminToken };
  try {
    const agents = 4;
    const rounds = 2;
    const images: { path: string; sha256: string }[][] = [];
    for (let a = 0; a < agents; a++) {
      images.push([]);
      for (let r = 0; r < rounds; r++) {
        const p = path.join(dir, `agent${a}-round${r}.img`);
        images[a].push({
          path: p,
          sha256: await writeImage(p, {
            seed: 'yankee',
            sizeMiB: 12,
            night: a * rounds + r + 1,
            changePercent: 8,
          }),
        });
      }
    }
    const shaOf = new Map<string, string>();
    let agentsDone = false;
    const adminRuns: { cmd: string; code: number | null; stderr: string }[] = [];
    const adminLoop = (async () => {
      while (!agentsDone) {
        for (const args of [
          ['forget', '--keep-last', '1', '--prune', '--json'],
          ['gc', '--json'],
        ]) {
          const r = await dv(args, conn);
          adminRuns.push({ cmd: args[0], code: r.code, stderr: r.stderr });
        }
        await sleep(100);
      }
    })();
    const results = await Promise.all(
      images.map(async (mine, a) => {
        const out = [];
        for (const img of mine) {
          const r = await backupCli(conn, img.path, `yankee${a}`, 'sda', ['--concurrency', '4'], {
            timeoutMs: 180_000,
          });
          out.push(r);
          if (r.code === 0) shaOf.set(summaryOf(r).snapshot, img.sha256);
        }
        return out;
      }),
    );
    agentsDone = true;
    await adminLoop;

    for (const r of results.flat()) {
      t.is(r.code, 0, `a backup failed under concurrent forget/gc: ${r.stderr.slice(-1000)}`);
      t.false(hasStackTrace(r.stderr));
    }
    t.true(adminRuns.length >= 2, 'forget and gc ran while the agents worked');
    for (const a of adminRuns) t.is(a.code, 0, `${a.cmd} failed: ${a.stderr}`);

    // One last forget so the kept set is stable, then check everything kept.
    t.is((await dv(['forget', '--keep-last', '1', '--prune', '--json'], conn)).code, 0);
    const kept = await listSnapshotsCli(conn);
    t.is(kept.length, agents, 'one snapshot per agent is kept');
    const v = await verifyCli(conn);
    t.true(v.report.ok, JSON.stringify(v.report));
    for (const s of kept) {
      t.true(shaOf.has(s.id), `snapshot ${s.id} came from a backup that reported success`);
      t.is(
        await restoreCli(conn, s.id, path.join(dir, 'restored.img')),
        shaOf.get(s.id) ?? 'unknown',
        `snapshot of ${s.host} restores bit-exact`,
      );
    }
  } finally {
    await srv.stop();
    await removeDir(dir);
  }
});
