import { execFileSync } from 'node:child_process';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import {
  backupCli,
  type Conn,
  hasStackTrace,
  listSnapshotsCli,
  removeDir,
  restoreCli,
  storageListing,
  summaryOf,
  tempDir,
  verifyCli,
} from '../helpers/reliability-harness.js';
import { writeImage } from '../helpers/reliability-images.js';
import { startTestServer, type TestServer } from '../helpers/server.js';

/**
 * A store that runs out of space: the backup fails with a clear message (507 StorageFull), nothing partial
 * becomes visible, the repository still verifies, and once space is freed the same backup succeeds.
 * Once with the fault-injecting storage wrapper, once with a real 64 MiB tmpfs when this machine lets the
 * test mount one.
 */
let dir: string;
const img: Record<string, { path: string; sha256: string }> = {};

test.before(async () => {
  dir = await tempDir('storage-full');
  for (const [name, seed, sizeMiB] of [
    ['small', 'mike', 12],
    ['big', 'november', 28],
  ] as const) {
    const p = path.join(dir, `${name}.img`);
    img[name] = { path: p, sha256: await writeImage(p, { seed, sizeMiB }) };
  }
});
test.after.always(async () => {
  if (dir) await removeDir(dir);
});

async function fullStoreScenario(
  t: ExecutionContext,
  srv: TestServer,
  fill: () => Promise<void>,
  free: () => Promise<void>,
): Promise<void> {
  const conn: Conn = { server: srv.url, token: srv.adminToken };
  const ok = await backupCli(conn, img.small.path, 'full-a', 'sda');
  t.is(ok.code, 0, ok.stderr);
  const first = summaryOf(ok).snapshot;

  await fill();
  const before = await listSnapshotsCli(conn);
  // A full store is not transient: the backup must say so promptly, not retry for minutes.
  const failed = await backupCli(conn, img.big.path, 'full-b', 'sda', [], { timeoutMs: 60_000 });
  t.deepEqual(await listSnapshotsCli(conn), before, 'no snapshot appears');
  const files = [...(await storageListing(srv.dataDir)).keys()];
  t.deepEqual(
    files.filter((f) => f.includes('.tmp~')),
    [],
    'no temp file is left behind',
  );

  await free();
  const v = await verifyCli(conn);
  t.true(v.report.ok, JSON.stringify(v.report));
  const again = await backupCli(conn, img.big.path, 'full-b', 'sda');
  t.is(again.code, 0, again.stderr);
  t.is(await restoreCli(conn, summaryOf(again).snapshot, path.join(dir, 'big-restored.img')), img.big.sha256);
  t.is(await restoreCli(conn, first, path.join(dir, 'small-restored.img')), img.small.sha256);
  t.true((await verifyCli(conn)).report.ok);

  // Checked last so that a slow failure does not hide what the checks above show.
  t.false(failed.timedOut, 'the backup gave up within 60 s');
  t.is(failed.code, 1, `the backup fails: ${failed.stdout.slice(-500)}`);
  t.regex(failed.stderr, /full|space|StorageFull|507/i, 'the message says the store is full');
  t.false(hasStackTrace(failed.stderr), failed.stderr);
}

test.serial(
  'with the fault wrapper: a full store fails the backup cleanly and the backup succeeds once space is freed',
  async (t) => {
    const srv = await startTestServer({ faults: true });
    try {
      await fullStoreScenario(
        t,
        srv,
        async () => srv.faults!.setFaults({ failPutAfterBytes: 3 * 1024 * 1024 }),
        async () => srv.faults!.setFaults({}),
      );
    } finally {
      await srv.stop();
    }
  },
);

function canMountTmpfs(): string | undefined {
  if (process.platform !== 'linux') return 'not Linux';
  const probe = path.join('/tmp', `dv-rel-mount-probe-${process.pid}`);
  try {
    execFileSync('mkdir', ['-p', probe]);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', probe], { stdio: 'ignore' });
    execFileSync('umount', [probe], { stdio: 'ignore' });
    return undefined;
  } catch {
    return 'mount -t tmpfs is not permitted here';
  } finally {
    execFileSync('rm', ['-rf', probe]);
  }
}

const noMount = canMountTmpfs();
const onTmpfs = noMount ? test.skip : test.serial;
onTmpfs(
  `on a real 64 MiB tmpfs: ENOSPC fails the backup cleanly and the backup succeeds once space is freed${noMount ? ` (skipped: ${noMount})` : ''}`,
  async (t) => {
    const mnt = path.join(dir, 'tmpfs');
    await mkdir(mnt, { recursive: true });
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', mnt]);
    let srv: TestServer | undefined;
    try {
      srv = await startTestServer({ dataDir: path.join(mnt, 'data') });
      const filler = path.join(mnt, 'filler');
      await fullStoreScenario(
        t,
        srv,
        // Leaves room for a few MiB, far less than the big image's new chunks.
        async () => writeFile(filler, Buffer.alloc(44 * 1024 * 1024, 1)),
        async () => rm(filler),
      );
    } finally {
      await srv?.stop();
      execFileSync('umount', ['-l', mnt]);
    }
  },
);
