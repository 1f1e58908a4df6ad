import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import test from 'ava';
import type { SnapshotInfo } from '../../repo-engine/types.js';
import {
  backupCli,
  type Conn,
  createRepository,
  dv,
  hasStackTrace,
  listSnapshotsCli,
  missingBytes,
  removeDir,
  restoreCli,
  ServerProcess,
  summaryOf,
  tempDir,
  verifyCli,
} from '../helpers/reliability-harness.js';
import { writeImage } from '../helpers/reliability-images.js';
import { distinctChunks, startTripwire, type Tripwire } from '../helpers/reliability-tripwire.js';
import { TEST_CHUNKER } from '../helpers/server.js';

/**
 * The server is SIGKILLed (no chance to clean up) in the middle of chunk uploads, a commit, a forget and a
 * gc, then started again on the same data folder. Each time the repository must verify clean with
 * --read-data, the interrupted work must complete when repeated, and every snapshot committed before must
 * restore bit-exact.
 */
let dir: string;
let server: ServerProcess;
let wire: Tripwire;
const images: Record<string, { path: string; sha256: string }> = {};
/** Every snapshot that must still restore, with the image hash it must restore to. */
const kept = new Map<string, string>();

const direct = (): Conn => ({ server: server.url, token: server.adminToken });
const viaWire = (): Conn => ({ server: wire.url, token: server.adminToken });

async function restartServer(): Promise<void> {
  await server.restart();
  const u = new URL(server.url);
  wire.target.port = Number(u.port);
}

/**
 * verify --read-data checks every stored chunk and manifest; restoring is slower, so each step restores the
 * oldest snapshot and the ones it touched, and the last test restores every snapshot still kept.
 */
async function assertRepositoryIntact(
  t: import('ava').ExecutionContext,
  when: string,
  restore: 'touched' | 'all' = 'touched',
  touched: string[] = [],
): Promise<SnapshotInfo[]> {
  const v = await verifyCli(direct());
  t.true(v.report.ok, `${when}: verify --read-data: ${JSON.stringify(v.report)}`);
  t.is(v.code, 0, when);
  t.is(v.report.refcountMismatches, 0, `${when}: refcounts equal a recount`);
  const snaps = await listSnapshotsCli(direct());
  const oldest = [...kept.keys()][0];
  for (const [id, sha] of kept) {
    const s = snaps.find((x) => x.id === id);
    t.truthy(s, `${when}: snapshot ${id} is still listed`);
    if (restore === 'touched' && id !== oldest && !touched.includes(id)) continue;
    const out = path.join(dir, `restore-${id.slice(0, 8)}.img`);
    const got = await restoreCli(direct(), id, out);
    const gotImage = Object.keys(images).find((k) => images[k].sha256 === got) ?? 'no known image';
    t.is(got, sha, `${when}: snapshot ${id} restores bit-exact (it restored to ${gotImage})`);
    await removeDir(out);
  }
  return snaps;
}

test.before(async () => {
  dir = await tempDir('server-crash');
  const make = async (name: string, seed: string, night = 0) => {
    const p = path.join(dir, `${name}.img`);
    images[name] = { path: p, sha256: await writeImage(p, { seed, sizeMiB: 20, night, changePercent: 10 }) };
  };
  await Promise.all([
    make('alpha', 'alpha'),
    make('bravo', 'bravo'),
    make('charlie0', 'charlie', 0),
    make('charlie1', 'charlie', 1),
    make('charlie2', 'charlie', 2),
  ]);
  await createRepository(path.join(dir, 'data'));
  server = new ServerProcess(path.join(dir, 'data'));
  await server.start();
  wire = await startTripwire(server.url);
  const r = await backupCli(direct(), images.alpha.path, 'alpha', 'sda');
  if (r.code !== 0) throw new Error(`seed backup failed: ${r.stderr}`);
  kept.set(summaryOf(r).snapshot, images.alpha.sha256);
});

test.after.always(async () => {
  await wire?.close();
  await server?.kill('SIGKILL');
  if (dir) await removeDir(dir);
});

test.serial(
  'a server killed during chunk uploads restarts consistent, and the backup run again uploads only what was missing',
  async (t) => {
    const chunks = await distinctChunks(images.bravo.path, TEST_CHUNKER);
    const mustUpload = await missingBytes(direct(), 'bravo', chunks);
    t.true(mustUpload > 6 * 1024 * 1024, 'the image has enough new data for the kill to land mid-upload');
    let uploadedAtKill = 0;
    // Killed once a tenth of the new data has gone over the wire: by bytes, not by a progress line, which a
    // fast backup of this small image may only print after its last upload.
    wire.armBytes(Math.floor(mustUpload * 0.1), (forwarded) => {
      uploadedAtKill = forwarded;
      server.killNow();
    });
    const first = await backupCli(viaWire(), images.bravo.path, 'bravo', 'sda', ['--concurrency', '4']);
    t.true(uploadedAtKill > 0, 'the server was killed mid-upload');
    t.not(first.code, 0, 'the interrupted backup reports failure');
    t.false(hasStackTrace(first.stderr), first.stderr);
    t.regex(first.stderr, /diskvault backup: /);

    await restartServer();
    const snaps = await assertRepositoryIntact(t, 'after a kill during uploads');
    t.false(
      snaps.some((s) => s.host === 'bravo'),
      'no snapshot of the interrupted backup is listed',
    );

    const again = await backupCli(direct(), images.bravo.path, 'bravo', 'sda');
    t.is(again.code, 0, again.stderr);
    const s = summaryOf(again);
    const newBytes = Number(s.newBytes);
    // Chunks acknowledged before the kill are not sent again (slack: uploads in flight at the kill).
    t.true(newBytes < mustUpload, `rerun uploads ${newBytes} of ${mustUpload} bytes`);
    t.true(
      newBytes <= mustUpload - uploadedAtKill * 0.8 + 8 * TEST_CHUNKER.max,
      `rerun uploads ${newBytes}; ${uploadedAtKill} were stored before the kill`,
    );
    kept.set(s.snapshot, images.bravo.sha256);
    await assertRepositoryIntact(t, 'after the rerun', 'touched', [s.snapshot]);
  },
);

test.serial(
  'a server killed during forget --prune restarts consistent; forget and gc run again complete',
  async (t) => {
    for (const name of ['charlie0', 'charlie2'] as const) {
      const r = await backupCli(direct(), images[name].path, 'charlie', 'sda');
      t.is(r.code, 0, r.stderr);
      kept.set(summaryOf(r).snapshot, images[name].sha256);
    }
    const plan = JSON.parse(
      (await dv(['forget', '--host', 'charlie', '--keep-last', '1', '--dry-run', '--json'], direct())).stdout,
    );
    const removing = new Set<string>(
      plan.plan.groups.flatMap((g: { remove: { id: string }[] }) => g.remove.map((s) => s.id)),
    );
    t.true(removing.size >= 1, 'forget has snapshots to remove');

    let fired = false;
    wire.arm(/POST \/v1\/forget/, () => {
      fired = true;
      setTimeout(() => server.killNow(), 5);
    });
    const killed = await dv(
      ['forget', '--host', 'charlie', '--keep-last', '1', '--prune', '--json'],
      viaWire(),
    );
    t.true(fired);
    t.false(hasStackTrace(killed.stderr), killed.stderr);
    await restartServer();
    // Whatever forget removed before the kill is gone for good; the rest must be intact.
    const listed = new Set((await listSnapshotsCli(direct())).map((s) => s.id));
    for (const id of removing) if (!listed.has(id)) kept.delete(id);
    await assertRepositoryIntact(t, 'after a kill during forget', 'touched', [...kept.keys()].slice(-1));

    const again = await dv(
      ['forget', '--host', 'charlie', '--keep-last', '1', '--prune', '--json'],
      direct(),
    );
    t.is(again.code, 0, again.stderr);
    for (const id of removing) kept.delete(id);
    const after = await assertRepositoryIntact(t, 'after forget ran again', 'touched', []);
    t.is(after.filter((s) => s.host === 'charlie').length, 1);
  },
);

test.serial('a server killed during gc restarts consistent and gc run again completes', async (t) => {
  // Garbage for gc: a whole host's snapshots forgotten without prune.
  const snaps = (await listSnapshotsCli(direct())).filter((s) => s.host === 'bravo');
  t.true(snaps.length > 0);
  for (const s of snaps) {
    const del = await fetch(`${server.url}/v1/snapshots/${s.id}`, {
      method: 'DELETE',
      headers: { authorization: `Bearer ${server.adminToken}` },
    });
    t.is(del.status, 204);
    kept.delete(s.id);
  }
  let fired = false;
  wire.arm(/POST \/v1\/gc/, () => {
    fired = true;
    setTimeout(() => server.killNow(), 20);
  });
  const killed = await dv(['gc', '--json'], viaWire());
  t.true(fired);
  t.false(hasStackTrace(killed.stderr), killed.stderr);
  await restartServer();
  await assertRepositoryIntact(t, 'after a kill during gc', 'touched', []);
  const again = await dv(['gc', '--json'], direct());
  t.is(again.code, 0, again.stderr);
  await assertRepositoryIntact(t, 'after gc ran again', 'touched', []);
});

/**
 * Kills the server the moment a new manifest file lands in the local storage folder: the commit has
 * stored the manifest and is about to (or just did) record it in the index. Polls, so the window is hit
 * within a millisecond or two rather than by luck.
 */
function killWhenManifestStored(): { stop(): void; firedBy(): string | undefined } {
  const folder = path.join(server.dataDir, 'storage', 'snapshots');
  const known = new Set(existsSync(folder) ? readdirSync(folder) : []);
  let newManifest: string | undefined;
  const timer = setInterval(() => {
    if (!existsSync(folder)) return;
    newManifest = readdirSync(folder).find((f) => /^[0-9a-f]{64}$/.test(f) && !known.has(f));
    if (newManifest) {
      server.killNow();
      clearInterval(timer);
    }
  }, 1);
  return { stop: () => clearInterval(timer), firedBy: () => newManifest };
}

for (const [label, delayMs] of [
  ['as the commit request arrives', 0],
  ['while the commit is being applied', 60],
  ['the moment the manifest reaches storage', -1],
] as const) {
  test.serial(
    `a server killed ${label} leaves either the whole snapshot or none, and the backup run again completes`,
    async (t) => {
      const image = delayMs === 0 ? images.charlie1 : delayMs > 0 ? images.charlie2 : images.charlie0;
      const watcher = delayMs < 0 ? killWhenManifestStored() : undefined;
      const before = (await listSnapshotsCli(direct())).filter((s) => s.host === 'charlie').length;
      let fired = false;
      wire.arm(/POST \/v1\/sessions\/[0-9a-f]+\/commit/, () => {
        fired = true;
        if (delayMs >= 0) setTimeout(() => server.killNow(), delayMs);
      });
      const first = await backupCli(viaWire(), image.path, 'charlie', 'sda');
      watcher?.stop();
      t.true(
        fired,
        `the commit was seen (backup exit ${first.code}, manifest that triggered the kill: ${watcher?.firedBy()}): ${first.stderr}`,
      );
      await restartServer();
      const snaps = (await assertRepositoryIntact(t, `after a kill ${label}`, 'touched', [])).filter(
        (s) => s.host === 'charlie',
      );
      if (first.code === 0) {
        // The answer came back before the kill: the snapshot must have survived it.
        t.true(snaps.some((s) => s.id === summaryOf(first).snapshot));
      } else {
        t.false(hasStackTrace(first.stderr), first.stderr);
        t.true(
          snaps.length === before || snaps.length === before + 1,
          'at most the one snapshot, never a partial one',
        );
      }
      for (const s of snaps) {
        if (!kept.has(s.id)) kept.set(s.id, image.sha256);
      }
      const again = await backupCli(direct(), image.path, 'charlie', 'sda');
      t.is(again.code, 0, again.stderr);
      kept.set(summaryOf(again).snapshot, image.sha256);
      await assertRepositoryIntact(t, 'after the rerun', delayMs < 0 ? 'all' : 'touched', [
        summaryOf(again).snapshot,
        ...snaps.map((s) => s.id),
      ]);
    },
  );
}
