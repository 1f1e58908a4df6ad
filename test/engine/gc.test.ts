import { createHash } from 'node:crypto';
import test from 'ava';
import { encodeStoredChunk } from '../../repo-engine/chunk-format.js';
import { TouchedSet } from '../../repo-engine/touched-set.js';
import { deferred } from '../helpers/deferred.js';
import {
  Backends,
  backup,
  bodyOf,
  indexRefcounts,
  manifestFor,
  openFixture,
  recount,
  referenced,
  restore,
  sha256,
} from '../helpers/engine-fixtures.js';
import type { MemoryStorage } from '../helpers/engine-memory-storage.js';
import { hookedStorage } from '../helpers/hooked-storage.js';

const backends = new Backends();
test.after.always(() => backends.stop());
const HOUR = 3_600_000;

for (const name of backends.names) {
  test(`${name}: gc keeps an unreferenced chunk uploaded by a session still open, and frees it once the session is gone and the grace has passed`, async (t) => {
    const fx = await openFixture(backends, name, { gcGraceMs: HOUR, sessionLeaseMs: 10 * HOUR });
    try {
      const s = await fx.repo.beginSession('pc1', 'sda');
      const data = Buffer.alloc(4000, 5);
      await fx.repo.putChunk(s.id, sha256(data), data, 'raw');
      fx.clock.advance(5 * HOUR); // far past the grace, but the session is open
      let report = await fx.repo.gc();
      t.is(report.chunksDeleted, 0);
      t.is(report.chunksProtected, 1);
      const snap = await fx.repo.commit(s.id, bodyOf(manifestFor('pc1', 'sda', [data])));
      t.true((await restore(fx.repo, snap.id)).equals(data));

      await fx.repo.deleteSnapshot(snap.id);
      report = await fx.repo.gc();
      t.is(report.chunksDeleted, 1);
      t.is(await fx.storage.stat(fx.repo.storedObjects.chunkKey(sha256(data))), undefined);
    } finally {
      await fx.cleanup();
    }
  });

  test(`${name}: a chunk gc removed between filterMissing and commit makes the commit fail with Conflict, never leaving a dangling manifest`, async (t) => {
    const fx = await openFixture(backends, name, { gcGraceMs: 0, sessionLeaseMs: 10 * HOUR });
    try {
      const data = Buffer.alloc(4000, 6);
      const old = await backup(fx.repo, data);
      await fx.repo.deleteSnapshot(old.id); // refcount 0, touched long ago
      fx.clock.advance(HOUR);
      const s = await fx.repo.beginSession('pc1', 'sda');
      fx.clock.advance(HOUR);
      // gc runs from another process's point of view before the session ever asked: nothing protects it.
      const report = await fx.repo.gc();
      t.is(report.chunksDeleted, 1);
      const err = await t.throwsAsync(fx.repo.commit(s.id, bodyOf(manifestFor('pc1', 'sda', [data]))));
      t.is((err as { code?: string }).code, 'Conflict');
      t.deepEqual((err as { details?: { missing: string[] } }).details?.missing, [sha256(data)]);
      const manifests = [];
      for await (const e of fx.storage.list('snapshots/')) manifests.push(e.key);
      t.deepEqual(manifests, []);
      // The agent re-uploads and commits: the chunk is stored anew.
      t.true((await fx.repo.putChunk(s.id, sha256(data), data, 'raw')).stored);
      const snap = await fx.repo.commit(s.id, bodyOf(manifestFor('pc1', 'sda', [data])));
      t.true((await restore(fx.repo, snap.id)).equals(data));
    } finally {
      await fx.cleanup();
    }
  });

  test(`${name}: a chunk filterMissing reported present survives a forget and gc during the in-flight session`, async (t) => {
    const fx = await openFixture(backends, name, { gcGraceMs: 0, sessionLeaseMs: 10 * HOUR });
    try {
      const data = Buffer.alloc(4000, 7);
      const old = await backup(fx.repo, data);
      fx.clock.advance(HOUR);
      const s = await fx.repo.beginSession('pc1', 'sda');
      t.deepEqual(await fx.repo.filterMissing(s.id, [sha256(data)]), []);
      // Forget the only snapshot using it while the session is in flight, then gc.
      await fx.repo.applyForget(fx.repo.planForget({ last: 0, within: '0h', tags: ['none'] }));
      t.is(fx.repo.getSnapshot(old.id), undefined);
      fx.clock.advance(HOUR);
      const report = await fx.repo.gc();
      t.is(report.chunksDeleted, 0);
      const snap = await fx.repo.commit(s.id, bodyOf(manifestFor('pc1', 'sda', [data])));
      t.true((await restore(fx.repo, snap.id)).equals(data));
      t.deepEqual(referenced(indexRefcounts(fx.indexPath)), referenced(await recount(fx.repo)));
    } finally {
      await fx.cleanup();
    }
  });

  test(`${name}: a session keeps its base snapshot's chunks when that snapshot is forgotten, since it may name them without asking`, async (t) => {
    const fx = await openFixture(backends, name, { gcGraceMs: 0, sessionLeaseMs: 10 * HOUR });
    try {
      const kept = Buffer.alloc(4000, 9);
      const old = await backup(fx.repo, kept);
      fx.clock.advance(HOUR);
      const s = await fx.repo.beginSession('pc1', 'sda');
      t.is(s.previous?.id, old.id);
      await fx.repo.deleteSnapshot(old.id);
      fx.clock.advance(HOUR);
      const report = await fx.repo.gc();
      t.is(report.chunksDeleted, 0);
      t.is(report.chunksHeld, 1);
      t.deepEqual(
        report.holders.map((h) => [h.kind, h.id, h.chunks]),
        [['session', s.id.slice(0, 8), 1]],
      );
      // The agent's known-set came from the base: it names the chunk without asking, and the commit holds.
      const snap = await fx.repo.commit(s.id, bodyOf(manifestFor('pc1', 'sda', [kept])));
      t.true((await restore(fx.repo, snap.id)).equals(kept));
      t.deepEqual((await fx.repo.gc()).holders, []);
    } finally {
      await fx.cleanup();
    }
  });

  test(`${name}: an upload racing gc's deletion of the same chunk waits and stores it anew`, async (t) => {
    const fx = await openFixture(backends, name, { gcGraceMs: 0, sessionLeaseMs: 10 * HOUR });
    try {
      const data = Buffer.alloc(4000, 8);
      const old = await backup(fx.repo, data);
      await fx.repo.deleteSnapshot(old.id);
      fx.clock.advance(HOUR);
      const s = await fx.repo.beginSession('pc1', 'sda');
      fx.clock.advance(HOUR);
      const gc = fx.repo.gc(); // phase 1 runs synchronously up to the first await: the row is gone now
      const put = fx.repo.putChunk(s.id, sha256(data), data, 'raw');
      const [report, stored] = await Promise.all([gc, put]);
      t.is(report.chunksDeleted, 1);
      t.true(stored.stored);
      t.truthy(await fx.storage.stat(fx.repo.storedObjects.chunkKey(sha256(data))));
      const snap = await fx.repo.commit(s.id, bodyOf(manifestFor('pc1', 'sda', [data])));
      t.true((await restore(fx.repo, snap.id)).equals(data));
    } finally {
      await fx.cleanup();
    }
  });

  test(`${name}: gc leaves alone a chunk whose damaged copy an upload is replacing, so the new copy stays stored`, async (t) => {
    const fx = await openFixture(backends, name, { gcGraceMs: HOUR, sessionLeaseMs: 10 * HOUR });
    try {
      const data = Buffer.alloc(4000, 10);
      const id = sha256(data);
      const key = fx.repo.storedObjects.chunkKey(id);
      // Storage that holds the upload's put of this chunk until the test lets it go, and that, should gc
      // delete the chunk meanwhile, lets the put land first (the order that loses the new copy).
      let gate = false;
      const held = deferred();
      const go = deferred();
      const landed = deferred();
      const deletedByGc: string[] = [];
      const storage = hookedStorage(fx.storage, {
        async put(k, d) {
          if (!(gate && k === key)) return fx.storage.put(k, d);
          gate = false;
          held.resolve();
          await go.promise;
          await fx.storage.put(k, d);
          landed.resolve();
        },
        async deleteMany(keys) {
          if (keys.includes(key)) {
            deletedByGc.push(key);
            go.resolve();
            await landed.promise;
          }
          return fx.storage.deleteMany(keys);
        },
      });
      await fx.reopen({ storage });
      const old = await backup(fx.repo, data);
      // The stored copy rots; a read finds it, and the chunk is marked damaged.
      const rotten = Buffer.from(await fx.storage.getBytes(key));
      rotten[rotten.length - 1] ^= 0xff;
      await fx.storage.put(key, rotten);
      await t.throwsAsync(fx.repo.readChunk(id));
      await fx.repo.deleteSnapshot(old.id);
      fx.clock.advance(2 * HOUR); // unreferenced, and touched long ago
      const s = await fx.repo.beginSession('pc1', 'sda');
      t.deepEqual(await fx.repo.filterMissing(s.id, [id]), [id]);
      gate = true;
      const upload = fx.repo.putChunk(s.id, id, data, 'raw');
      await held.promise; // the upload is writing the new copy
      const report = await fx.repo.gc();
      go.resolve();
      t.true((await upload).written);
      t.deepEqual(deletedByGc, []);
      t.is(report.chunksDeleted, 0);
      const snap = await fx.repo.commit(s.id, bodyOf(manifestFor('pc1', 'sda', [data])));
      t.true((await restore(fx.repo, snap.id)).equals(data));
    } finally {
      await fx.cleanup();
    }
  });

  test(`${name}: a delete whose manifest could not be deleted keeps its chunks through gc, and the snapshot comes back whole at the next open`, async (t) => {
    const fx = await openFixture(backends, name, { gcGraceMs: HOUR, sessionLeaseMs: 10 * HOUR });
    try {
      let failManifestDelete = false;
      const storage = hookedStorage(fx.storage, {
        async delete(key) {
          if (failManifestDelete && key.startsWith('snapshots/')) {
            failManifestDelete = false;
            throw new Error('storage unavailable (503)');
          }
          return fx.storage.delete(key);
        },
      });
      await fx.reopen({ storage });
      const data = Buffer.alloc(4000, 12);
      const snap = await backup(fx.repo, data);
      failManifestDelete = true;
      await t.throwsAsync(fx.repo.deleteSnapshot(snap.id), { message: /503/ });
      fx.clock.advance(2 * HOUR);
      const report = await fx.repo.gc();
      t.is(report.chunksDeleted, 0, 'the chunks its manifest names are kept');
      t.true(fx.logs.some((l) => l.includes('its delete stopped')));
      await fx.reopen({ storage });
      t.truthy(fx.repo.getSnapshot(snap.id), 'the manifest was adopted again');
      t.true((await restore(fx.repo, snap.id)).equals(data));
      // Deleted again, for good this time: gc then frees the chunk. (The rebuild at the open dated the
      // chunk by its object's time in storage: the test's clock moves on from the real one.)
      fx.clock.t = Math.max(fx.clock.t, Date.now());
      await fx.repo.deleteSnapshot(snap.id);
      fx.clock.advance(2 * HOUR);
      const last = await fx.repo.gc();
      t.is(last.chunksDeleted, 1, JSON.stringify(last));
    } finally {
      await fx.cleanup();
    }
  });
}

test('gc deletes orphan chunk objects unknown to the index only once they are older than the grace period', async (t) => {
  const fx = await openFixture(new Backends(), 'memory', { gcGraceMs: HOUR });
  try {
    const storage = fx.storage as MemoryStorage;
    storage.clock = fx.clock.now;
    const orphan = Buffer.alloc(3000, 1);
    const key = fx.repo.storedObjects.chunkKey(sha256(orphan));
    const object = fx.repo.storedObjects.sealChunk(sha256(orphan), [
      encodeStoredChunk('raw', orphan.length, orphan),
    ]);
    // Sealed: 24-byte header, the 32-byte id, the 9-byte chunk header and the bytes, a 16-byte tag.
    t.is(object.length, 24 + 32 + 9 + orphan.length + 16);
    await storage.put(key, object);
    fx.clock.advance(HOUR - 1);
    t.is((await fx.repo.gc()).orphansDeleted, 0);
    fx.clock.advance(2);
    const report = await fx.repo.gc();
    t.is(report.orphansDeleted, 1);
    t.is(report.bytesFreed, object.length);
    t.is(await storage.stat(fx.repo.storedObjects.chunkKey(sha256(orphan))), undefined);
  } finally {
    await fx.cleanup();
  }
});

test('gc reaps expired sessions so their protection ends', async (t) => {
  const fx = await openFixture(new Backends(), 'memory', { gcGraceMs: HOUR, sessionLeaseMs: HOUR });
  try {
    const s = await fx.repo.beginSession('pc1', 'sda');
    const data = Buffer.alloc(2000, 2);
    await fx.repo.putChunk(s.id, sha256(data), data, 'raw');
    fx.clock.advance(HOUR / 2);
    t.is((await fx.repo.gc()).chunksDeleted, 0);
    fx.clock.advance(2 * HOUR);
    t.is((await fx.repo.gc()).chunksDeleted, 1);
    t.throws(() => fx.repo.touchSession(s.id));
  } finally {
    await fx.cleanup();
  }
});

test('a touched set never forgets an id, rarely claims one, and once saturated claims every one', (t) => {
  const set = new TouchedSet(100_000);
  const ids = Array.from({ length: 100_000 }, (_, i) => createHash('sha256').update(`in ${i}`).digest());
  for (const id of ids) set.add(id);
  t.true(ids.every((id) => set.has(id)));
  let false_ = 0;
  for (let i = 0; i < 100_000; i++) if (set.has(createHash('sha256').update(`out ${i}`).digest())) false_++;
  t.true(false_ < 1000, `${false_} of 100,000 absent ids claimed`);
  t.true(set.bytes < 300_000, `${set.bytes} bytes`);
  t.false(set.saturated);
  set.add(createHash('sha256').update('one more').digest());
  t.true(set.saturated);
  t.true(set.has(createHash('sha256').update('never added').digest()));
});
