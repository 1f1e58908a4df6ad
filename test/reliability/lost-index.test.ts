import { readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import test from 'ava';
import Database from 'better-sqlite3';
import {
  backupCli,
  type Conn,
  createRepository,
  dv,
  listSnapshotsCli,
  removeDir,
  restoreCli,
  ServerProcess,
  summaryOf,
  tempDir,
  verifyCli,
} from '../helpers/reliability-harness.js';
import { writeImage } from '../helpers/reliability-images.js';

/**
 * The index database is only a cache of what storage holds. Deleted while the server is stopped, it is
 * rebuilt at the next start: the same snapshots, the same refcount for every chunk, the same statistics,
 * and every snapshot restores bit-exact.
 */
function refcounts(indexPath: string): Map<string, number> {
  const db = new Database(indexPath, { readonly: true });
  try {
    const rows = db.prepare('SELECT lower(hex(id)) AS id, refcount FROM chunks').all() as {
      id: string;
      refcount: number;
    }[];
    return new Map(rows.map((r) => [r.id, r.refcount]));
  } finally {
    db.close();
  }
}

test('a deleted index is rebuilt at start with identical snapshots, refcounts and statistics, and every snapshot restores', async (t) => {
  const dir = await tempDir('lost-index');
  const dataDir = path.join(dir, 'data');
  const server = new ServerProcess(dataDir);
  try {
    await createRepository(dataDir);
    await server.start();
    const conn = (): Conn => ({ server: server.url, token: server.adminToken });
    const shas = new Map<string, string>();
    for (const [host, seed, night] of [
      ['quebec', 'quebec', 0],
      ['quebec', 'quebec', 1],
      ['romeo', 'romeo', 0],
      ['romeo', 'romeo', 1],
    ] as const) {
      const image = path.join(dir, `${seed}-${night}.img`);
      const sha = await writeImage(image, { seed, sizeMiB: 12, night, changePercent: 15 });
      const r = await backupCli(conn(), image, host, 'sda');
      t.is(r.code, 0, r.stderr);
      shas.set(summaryOf(r).snapshot, sha);
    }
    // Leave history behind so refcounts are not all 1: one snapshot forgotten and its garbage collected.
    const forget = await dv(['forget', '--host', 'romeo', '--keep-last', '1', '--prune', '--json'], conn());
    t.is(forget.code, 0, forget.stderr);
    for (const g of JSON.parse(forget.stdout).plan.groups) for (const s of g.remove) shas.delete(s.id);

    const statsBefore = JSON.parse((await dv(['stats', '--json'], conn())).stdout);
    const snapsBefore = await listSnapshotsCli(conn());
    await server.stop();
    const indexPath = path.join(dataDir, 'index.sqlite');
    const countsBefore = refcounts(indexPath);
    t.true(
      [...countsBefore.values()].some((n) => n > 1),
      'some chunks are shared',
    );

    for (const f of await readdir(dataDir)) if (f.startsWith('index.sqlite')) await rm(path.join(dataDir, f));
    await server.start();

    t.deepEqual(await listSnapshotsCli(conn()), snapsBefore);
    t.deepEqual(JSON.parse((await dv(['stats', '--json'], conn())).stdout), statsBefore);
    const v = await verifyCli(conn());
    t.true(v.report.ok, JSON.stringify(v.report));
    for (const [id, sha] of shas)
      t.is(await restoreCli(conn(), id, path.join(dir, 'restored.img')), sha, `snapshot ${id} restores`);

    await server.stop();
    t.deepEqual(refcounts(indexPath), countsBefore, 'every chunk has the refcount it had');
  } finally {
    await server.kill('SIGKILL');
    await removeDir(dir);
  }
});
