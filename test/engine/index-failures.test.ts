import { readdir, rm, writeFile } from 'node:fs/promises';
import test from 'ava';
import Database from 'better-sqlite3';
import { DiskvaultError } from '../../common/errors.js';
import { snapshotKey } from '../../repo-engine/manifest-store.js';
import type { StorageAdapter } from '../../storage-adapters/adapter.js';
import {
  Backends,
  backup,
  indexRefcounts,
  makeImage,
  makePalette,
  openFixture,
  restore,
  seededRandom,
} from '../helpers/engine-fixtures.js';

const backends = new Backends();
test.after.always(() => backends.stop());

const DAY = 24 * 3_600_000;

/** Makes `storage.get` of `key` fail as a storage outage would, while `failing()` says so. */
function failGetOf(storage: StorageAdapter, key: string, failing: () => boolean): void {
  const get = storage.get.bind(storage);
  storage.get = async (k, range) => {
    if (k === key && failing()) throw new DiskvaultError('Unavailable', `get ${k}: 503 SlowDown`);
    return get(k, range);
  };
}

for (const name of backends.names) {
  test(`${name}: a manifest storage cannot serve for a passing reason fails reindex and leaves the index as it was`, async (t) => {
    const fx = await openFixture(backends, name, { gcGraceMs: 1000 });
    try {
      const rand = seededRandom(17);
      const palette = makePalette(rand, 8);
      await backup(fx.repo, makeImage(rand, 8, palette), { disk: 'sda' });
      // Chunks no other snapshot uses: gc would delete them if this snapshot were left out.
      const image = Buffer.alloc(4096 * 3, 0x42);
      const only = await backup(fx.repo, image, { disk: 'sdb' });
      const refcounts = indexRefcounts(fx.indexPath);
      const snapshots = fx.repo.listSnapshots();
      let failing = true;
      failGetOf(fx.storage, snapshotKey(only.id), () => failing);

      const err = await t.throwsAsync(fx.repo.reindex());
      t.regex(err?.message ?? '', /503 SlowDown/);
      t.true(fx.logs.some((l) => l.includes(only.id) && /index is unchanged/.test(l)));
      t.deepEqual(fx.repo.listSnapshots(), snapshots);
      t.deepEqual(indexRefcounts(fx.indexPath), refcounts);
      // The half-built index beside the live one is removed.
      t.deepEqual(
        (await readdir(fx.dir)).filter((f) => f.includes('.rebuild-')),
        [],
      );

      failing = false;
      fx.clock.advance(10 * DAY);
      t.is((await fx.repo.gc()).chunksDeleted, 0);
      await fx.reopen();
      t.deepEqual(await restore(fx.repo, only.id), image);
      t.true((await fx.repo.verify({ readData: true })).ok);
    } finally {
      await fx.cleanup();
    }
  });

  test(`${name}: a lost index is not rebuilt without a manifest storage cannot serve for a passing reason`, async (t) => {
    const fx = await openFixture(backends, name, { gcGraceMs: 1000 });
    try {
      const image = Buffer.alloc(4096 * 3, 0x43);
      const only = await backup(fx.repo, image, { disk: 'sdb' });
      const refcounts = indexRefcounts(fx.indexPath);
      await fx.repo.close();
      for (const suffix of ['', '-wal', '-shm']) await rm(`${fx.indexPath}${suffix}`, { force: true });
      let failing = true;
      failGetOf(fx.storage, snapshotKey(only.id), () => failing);
      await t.throwsAsync(fx.reopen(), { message: /503 SlowDown/ });

      failing = false;
      await fx.reopen();
      t.deepEqual(indexRefcounts(fx.indexPath), refcounts);
      t.deepEqual(await restore(fx.repo, only.id), image);
    } finally {
      await fx.cleanup();
    }
  });

  test(`${name}: reindex leaves out a corrupt manifest, names it in the log, and indexes the others`, async (t) => {
    const fx = await openFixture(backends, name);
    try {
      const kept = await backup(fx.repo, Buffer.alloc(4096 * 2, 0x44), { disk: 'sda' });
      const bad = await backup(fx.repo, Buffer.alloc(4096 * 2, 0x45), { disk: 'sdb' });
      const key = snapshotKey(bad.id);
      const manifest = await fx.storage.getBytes(key);
      manifest[manifest.length - 1] ^= 0xff;
      await fx.storage.put(key, manifest);
      const r = await fx.repo.reindex();
      t.is(r.snapshots, 1);
      t.deepEqual(
        fx.repo.listSnapshots().map((s) => s.id),
        [kept.id],
      );
      t.true(fx.logs.some((l) => l.includes(bad.id) && /left out/.test(l)));
    } finally {
      await fx.cleanup();
    }
  });
}

test('an index file another process holds locked fails the open and is kept as it is, with its leases', async (t) => {
  const fx = await openFixture(backends, 'local');
  try {
    const snap = await backup(fx.repo, Buffer.alloc(4096 * 2, 0x46));
    const lease = await fx.repo.takeLease(snap.id, 'token-1');
    await fx.repo.close();
    // Another process (another server started on the same data folder) holds the file locked: SQLITE_BUSY.
    const blocker = new Database(fx.indexPath, { fileMustExist: true });
    try {
      blocker.pragma('locking_mode = EXCLUSIVE');
      blocker.exec('BEGIN EXCLUSIVE');
      const err = await t.throwsAsync(fx.reopen(), { message: /cannot open the index .*database is locked/ });
      t.is((err as { code?: string } | undefined)?.code, 'SQLITE_BUSY');
    } finally {
      blocker.exec('ROLLBACK');
      blocker.close();
    }
    t.false(fx.logs.some((l) => /rebuild/.test(l)));
    await fx.reopen();
    t.is(fx.repo.getLease(lease.id)?.snapshot, snap.id);
    t.false(fx.logs.some((l) => /rebuild/.test(l)));
  } finally {
    await fx.cleanup();
  }
});

test('an index file that is not a database, or has no index schema, is still rebuilt from storage at open', async (t) => {
  const fx = await openFixture(backends, 'local');
  try {
    const snap = await backup(fx.repo, Buffer.alloc(4096 * 2, 0x47));
    const refcounts = indexRefcounts(fx.indexPath);
    for (const damage of [Buffer.alloc(8192, 0x41), Buffer.alloc(0)]) {
      await fx.repo.close();
      for (const suffix of ['-wal', '-shm']) await rm(`${fx.indexPath}${suffix}`, { force: true });
      await writeFile(fx.indexPath, damage);
      fx.logs.length = 0;
      await fx.reopen();
      t.true(fx.logs.some((l) => /unusable .*rebuilding it from storage/.test(l)));
      t.deepEqual(indexRefcounts(fx.indexPath), refcounts);
      t.is(fx.repo.getSnapshot(snap.id)?.id, snap.id);
    }
  } finally {
    await fx.cleanup();
  }
});
