import test from 'ava';
import {
  Backends,
  backup,
  bodyOf,
  chunkImage,
  indexRefcounts,
  manifestFor,
  openFixture,
  restore,
  sha256,
} from '../helpers/engine-fixtures.js';

const backends = new Backends();
test.after.always(() => backends.stop());

for (const name of backends.names) {
  test(`${name}: tenants share one stored copy only after each uploads it, and gc frees it only when neither references it`, async (t) => {
    const fx = await openFixture(backends, name, { gcGraceMs: 0 });
    try {
      const image = Buffer.concat([Buffer.alloc(4096, 1), Buffer.alloc(4096, 2)]);
      const ids = chunkImage(image).map(sha256);
      const a = await backup(fx.repo, image, { tenant: 'acme', host: 'a1' });

      // B does not learn that A holds these chunks.
      const sb = await fx.repo.beginSession('b1', 'sda', 'globex');
      t.deepEqual(await fx.repo.filterMissing(sb.id, ids), ids);
      const refused = await t.throwsAsync(
        fx.repo.commit(sb.id, bodyOf(manifestFor('b1', 'sda', chunkImage(image)))),
      );
      t.is((refused as { code?: string }).code, 'Conflict');
      t.deepEqual(
        [...((refused as { details?: { missing: string[] } }).details?.missing ?? [])].sort(),
        [...ids].sort(),
      );
      t.is(fx.repo.getSnapshot(a.id)?.tenant, 'acme');

      // B uploads: the hash is checked, storage is not rewritten, B now owns the chunks. The answer is the
      // one for a chunk B did not hold, whatever A holds.
      const before = await fx.storage.stat(fx.repo.storedObjects.chunkKey(ids[0] as string));
      for (const c of chunkImage(image))
        t.deepEqual(await fx.repo.putChunk(sb.id, sha256(c), c, 'raw'), { stored: true, written: false });
      t.is(
        (await fx.storage.stat(fx.repo.storedObjects.chunkKey(ids[0] as string)))?.mtimeMs,
        before?.mtimeMs,
      );
      const b = await fx.repo.commit(sb.id, bodyOf(manifestFor('b1', 'sda', chunkImage(image))));
      t.is(b.tenant, 'globex');
      for (const id of ids) t.is(indexRefcounts(fx.indexPath).get(id), 2);
      const stats = fx.repo.stats();
      t.is(stats.uniqueChunks, 2);
      t.deepEqual(
        stats.perTenant.map((p) => [p.tenant, p.snapshots, p.uniqueBytes]),
        [
          ['acme', 1, 0],
          ['globex', 1, 0],
        ],
      );

      await fx.repo.deleteSnapshot(a.id);
      fx.clock.advance(3_600_000);
      t.is((await fx.repo.gc()).chunksDeleted, 0);
      t.true((await restore(fx.repo, b.id)).equals(image));
      await fx.repo.deleteSnapshot(b.id);
      t.is((await fx.repo.gc()).chunksDeleted, 2);
      for (const id of ids) t.is(await fx.storage.stat(fx.repo.storedObjects.chunkKey(id)), undefined);
    } finally {
      await fx.cleanup();
    }
  });
}

test('a tenant cannot claim a chunk it does not hold: an upload with the wrong bytes is refused', async (t) => {
  const fx = await openFixture(new Backends(), 'memory');
  try {
    const data = Buffer.alloc(4096, 3);
    await backup(fx.repo, data, { tenant: 'acme' });
    const sb = await fx.repo.beginSession('b1', 'sda', 'globex');
    const err = await t.throwsAsync(fx.repo.putChunk(sb.id, sha256(data), Buffer.alloc(4096, 4), 'raw'));
    t.is((err as { code?: string }).code, 'HashMismatch');
    t.deepEqual(await fx.repo.filterMissing(sb.id, [sha256(data)]), [sha256(data)]);
    t.deepEqual(fx.repo.listSnapshots({ tenant: 'globex' }), []);
    const stats = fx.repo.stats();
    t.deepEqual(
      stats.perTenant.map((p) => [p.tenant, p.uniqueBytes > 0]),
      [['acme', true]],
    );
  } finally {
    await fx.cleanup();
  }
});

test('ownership survives a lost index: it is rebuilt from the tenant recorded in each manifest', async (t) => {
  const fx = await openFixture(new Backends(), 'memory');
  try {
    const data = Buffer.alloc(4096, 5);
    await backup(fx.repo, data, { tenant: 'acme' });
    await fx.reopen();
    await fx.repo.reindex();
    const sa = await fx.repo.beginSession('a1', 'sda', 'acme');
    const sb = await fx.repo.beginSession('b1', 'sda', 'globex');
    t.deepEqual(await fx.repo.filterMissing(sa.id, [sha256(data)]), []);
    t.deepEqual(await fx.repo.filterMissing(sb.id, [sha256(data)]), [sha256(data)]);
  } finally {
    await fx.cleanup();
  }
});
