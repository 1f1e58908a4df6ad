import { rm, writeFile } from 'node:fs/promises';
import test from 'ava';
import Database from 'better-sqlite3';
import { compress } from 'zstd-napi';
import { encodeStoredChunk } from '../../repo-engine/chunk-format.js';
import { snapshotKey } from '../../repo-engine/manifest-store.js';
import {
  Backends,
  backup,
  bodyOf,
  chunkImage,
  indexRefcounts,
  makeImage,
  makePalette,
  manifestFor,
  openFixture,
  recount,
  referenced,
  restore,
  seededRandom,
  sha256,
  TEST_CHUNKER,
} from '../helpers/engine-fixtures.js';
import { MemoryStorage } from '../helpers/engine-memory-storage.js';
import { hookedStorage } from '../helpers/hooked-storage.js';

const backends = new Backends();
test.after.always(() => backends.stop());

for (const name of backends.names) {
  test(`${name}: a committed snapshot reads back bit-exact and counts one reference per manifest entry`, async (t) => {
    const fx = await openFixture(backends, name);
    try {
      const rand = seededRandom(1);
      const palette = makePalette(rand, 6);
      const image = Buffer.concat([
        makeImage(rand, 20, palette),
        Buffer.from('tail that is not a whole block'),
      ]);
      const snap = await backup(fx.repo, image, { tags: ['nightly'] });
      t.is(snap.size, image.length);
      t.deepEqual(snap.tags, ['nightly']);
      t.is(snap.tenant, 'default');
      t.true((await restore(fx.repo, snap.id)).equals(image));
      t.deepEqual(referenced(indexRefcounts(fx.indexPath)), referenced(await recount(fx.repo)));
      const header = await fx.repo.getManifestHeader(snap.id);
      t.is(header.id, snap.id);
      t.is(header.tenant, 'default');
    } finally {
      await fx.cleanup();
    }
  });

  test(`${name}: a second backup of the same image uploads nothing and the session offers the previous snapshot`, async (t) => {
    const fx = await openFixture(backends, name);
    try {
      const rand = seededRandom(2);
      const image = makeImage(rand, 12, makePalette(rand, 4));
      const first = await backup(fx.repo, image);
      const session = await fx.repo.beginSession('pc1', 'sda');
      t.is(session.previous?.id, first.id);
      t.deepEqual(session.chunker, TEST_CHUNKER);
      const ids = chunkImage(image).map(sha256);
      t.deepEqual(await fx.repo.filterMissing(session.id, ids), []);
      const second = await fx.repo.commit(session.id, bodyOf(manifestFor('pc1', 'sda', chunkImage(image))));
      t.not(second.id, first.id);
      t.deepEqual(referenced(indexRefcounts(fx.indexPath)), referenced(await recount(fx.repo)));
    } finally {
      await fx.cleanup();
    }
  });

  test(`${name}: a commit naming chunks never uploaded is refused with the missing ids and stores no manifest`, async (t) => {
    const fx = await openFixture(backends, name);
    try {
      const chunks = [Buffer.alloc(2000, 1), Buffer.alloc(3000, 2)];
      const session = await fx.repo.beginSession('pc1', 'sda');
      await fx.repo.putChunk(session.id, sha256(chunks[0] as Buffer), chunks[0] as Buffer, 'raw');
      const err = await t.throwsAsync(fx.repo.commit(session.id, bodyOf(manifestFor('pc1', 'sda', chunks))));
      t.is((err as { code?: string }).code, 'Conflict');
      t.deepEqual((err as { details?: { missing: string[] } }).details?.missing, [
        sha256(chunks[1] as Buffer),
      ]);
      const snapshotObjects = [];
      for await (const e of fx.storage.list('snapshots/')) snapshotObjects.push(e.key);
      t.deepEqual(snapshotObjects, []);
      // The session stays open: upload the rest and commit again.
      await fx.repo.putChunk(session.id, sha256(chunks[1] as Buffer), chunks[1] as Buffer, 'raw');
      const snap = await fx.repo.commit(session.id, bodyOf(manifestFor('pc1', 'sda', chunks)));
      t.true((await restore(fx.repo, snap.id)).equals(Buffer.concat(chunks)));
    } finally {
      await fx.cleanup();
    }
  });

  test(`${name}: an upload whose bytes do not hash to its id is refused and nothing is stored`, async (t) => {
    const fx = await openFixture(backends, name);
    try {
      const session = await fx.repo.beginSession('pc1', 'sda');
      const data = Buffer.alloc(4096, 7);
      const wrongId = sha256(Buffer.alloc(4096, 8));
      const raw = await t.throwsAsync(fx.repo.putChunk(session.id, wrongId, data, 'raw'));
      t.is((raw as { code?: string }).code, 'HashMismatch');
      const z = await t.throwsAsync(fx.repo.putChunk(session.id, wrongId, compress(data), 'zstd'));
      t.is((z as { code?: string }).code, 'HashMismatch');
      t.is(await fx.storage.stat(fx.repo.storedObjects.chunkKey(wrongId)), undefined);
      t.deepEqual(await fx.repo.filterMissing(session.id, [wrongId]), [wrongId]);
    } finally {
      await fx.cleanup();
    }
  });

  test(`${name}: a zstd upload is stored as sent and served without recompression; raw uploads compress only when it pays`, async (t) => {
    const fx = await openFixture(backends, name);
    try {
      const session = await fx.repo.beginSession('pc1', 'sda');
      const text = Buffer.alloc(8192, 'abcdefgh');
      const packed = compress(text, { compressionLevel: 9 });
      t.true((await fx.repo.putChunk(session.id, sha256(text), packed, 'zstd')).stored);
      const served = await fx.repo.readStoredChunk(sha256(text));
      t.is(served.encoding, 'zstd');
      t.true(served.payload.equals(packed));
      t.is(served.rawLength, text.length);

      const noise = Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 2654435761) >>> 24));
      const rand = seededRandom(3);
      for (let i = 0; i < noise.length; i++) noise[i] = Math.floor(rand() * 256);
      await fx.repo.putChunk(session.id, sha256(noise), noise, 'raw');
      t.is((await fx.repo.readStoredChunk(sha256(noise))).encoding, 'raw');
      const zeros = Buffer.alloc(4096);
      await fx.repo.putChunk(session.id, sha256(zeros), zeros, 'raw');
      const z = await fx.repo.readStoredChunk(sha256(zeros));
      t.is(z.encoding, 'zstd');
      t.true((await fx.repo.readChunk(sha256(zeros))).equals(zeros));
      t.false((await fx.repo.putChunk(session.id, sha256(zeros), zeros, 'raw')).stored);
    } finally {
      await fx.cleanup();
    }
  });

  test(`${name}: a chunk corrupted in storage is named by readChunk and by verify with every snapshot using it`, async (t) => {
    const fx = await openFixture(backends, name, { cacheBytes: 0 });
    try {
      const rand = seededRandom(4);
      const palette = makePalette(rand, 4);
      const a = await backup(fx.repo, Buffer.concat([palette[0], palette[1]] as Buffer[]), { host: 'a' });
      const b = await backup(fx.repo, Buffer.concat([palette[1], palette[2]] as Buffer[]), { host: 'b' });
      await backup(fx.repo, Buffer.concat([palette[3]] as Buffer[]), { host: 'c' });
      const victim = sha256(palette[1] as Buffer);
      t.true((await fx.repo.verify({ readData: true })).ok);
      const garbage = Buffer.from((palette[1] as Buffer).map((x) => x ^ 0xff));
      await fx.storage.put(
        fx.repo.storedObjects.chunkKey(victim),
        encodeStoredChunk('raw', garbage.length, garbage),
      );
      const err = await t.throwsAsync(fx.repo.readChunk(victim));
      t.is((err as { code?: string }).code, 'Corrupt');
      t.regex((err as Error).message, new RegExp(victim));
      const report = await fx.repo.verify({ readData: true });
      t.false(report.ok);
      t.deepEqual(
        report.problems.map((p) => [p.chunk, p.kind, p.snapshots]),
        [[victim, 'corrupt', [a.id, b.id].sort()]],
      );

      await fx.storage.delete(fx.repo.storedObjects.chunkKey(victim));
      const quick = await fx.repo.verify({ readData: false });
      t.deepEqual(
        quick.problems.map((p) => [p.chunk, p.kind, p.snapshots]),
        [[victim, 'missing', [a.id, b.id].sort()]],
      );
    } finally {
      await fx.cleanup();
    }
  });

  test(`${name}: a lost index is rebuilt from storage at open with identical refcounts`, async (t) => {
    const fx = await openFixture(backends, name);
    try {
      const rand = seededRandom(5);
      const palette = makePalette(rand, 8);
      for (let i = 0; i < 4; i++)
        await backup(fx.repo, makeImage(rand, 10, palette), {
          host: `h${i % 2}`,
          tenant: i === 3 ? 'other' : undefined,
        });
      // An upload never committed: it must survive as an unreferenced chunk.
      const s = await fx.repo.beginSession('h0', 'sda');
      const lone = Buffer.alloc(3000, 9);
      await fx.repo.putChunk(s.id, sha256(lone), lone, 'raw');
      const before = indexRefcounts(fx.indexPath);
      const snapshotsBefore = fx.repo.listSnapshots();
      await fx.repo.close();
      for (const suffix of ['', '-wal', '-shm']) await rm(`${fx.indexPath}${suffix}`, { force: true });
      await fx.reopen();
      t.deepEqual(indexRefcounts(fx.indexPath), before);
      t.deepEqual(fx.repo.listSnapshots(), snapshotsBefore);
      t.true(fx.logs.some((l) => /rebuild/.test(l)));
      t.true((await fx.repo.verify({ readData: false })).ok);

      // A damaged index file is detected the same way.
      await fx.repo.close();
      for (const suffix of ['-wal', '-shm']) await rm(`${fx.indexPath}${suffix}`, { force: true });
      await writeFile(fx.indexPath, Buffer.alloc(8192, 0x41));
      await fx.reopen();
      t.deepEqual(indexRefcounts(fx.indexPath), before);

      const again = await fx.repo.reindex();
      t.is(again.snapshots, 4);
      t.deepEqual(indexRefcounts(fx.indexPath), before);
    } finally {
      await fx.cleanup();
    }
  });

  test(`${name}: deleting a snapshot whose manifest cannot be read lowers no count and keeps the snapshot`, async (t) => {
    const fx = await openFixture(backends, name);
    try {
      const rand = seededRandom(61);
      const palette = makePalette(rand, 4);
      const snap = await backup(fx.repo, Buffer.concat([palette[0], palette[1], palette[1]] as Buffer[]));
      const before = indexRefcounts(fx.indexPath);
      // The manifest's tail (its trailer, or the last sealed segment) is damaged: it fails only at the end.
      const key = snapshotKey(snap.id);
      const manifest = await fx.storage.getBytes(key);
      manifest[manifest.length - 1] ^= 0xff;
      await fx.storage.put(key, manifest);
      await t.throwsAsync(fx.repo.deleteSnapshot(snap.id));
      t.deepEqual(indexRefcounts(fx.indexPath), before);
      t.is(fx.repo.getSnapshot(snap.id)?.id, snap.id);
    } finally {
      await fx.cleanup();
    }
  });

  test(`${name}: a delete lowers every reference it can and logs those the index had no count for`, async (t) => {
    const fx = await openFixture(backends, name);
    try {
      const rand = seededRandom(62);
      const palette = makePalette(rand, 4);
      const twice = palette[1] as Buffer;
      const snap = await backup(fx.repo, Buffer.concat([palette[0], twice, twice] as Buffer[]));
      t.is(indexRefcounts(fx.indexPath).get(sha256(twice)), 2);
      // An inconsistent index: one of the two references to `twice` is not counted.
      const db = new Database(fx.indexPath);
      try {
        db.prepare('UPDATE chunks SET refcount = 1 WHERE id = ?').run(Buffer.from(sha256(twice), 'hex'));
      } finally {
        db.close();
      }
      await fx.repo.deleteSnapshot(snap.id);
      const after = indexRefcounts(fx.indexPath);
      t.is(after.get(sha256(twice)), 0);
      t.is(after.get(sha256(palette[0] as Buffer)), 0);
      t.true(
        fx.logs.some((m) => m.includes(`snapshot ${snap.id}: 1 references had no count to lower`)),
        fx.logs.join('\n'),
      );
    } finally {
      await fx.cleanup();
    }
  });

  test(`${name}: deleting a snapshot lowers refcounts, removes its manifest, and gc then frees what nothing uses`, async (t) => {
    const fx = await openFixture(backends, name, { gcGraceMs: 0 });
    try {
      const rand = seededRandom(6);
      const palette = makePalette(rand, 6);
      const keep = await backup(fx.repo, Buffer.concat([palette[0], palette[1]] as Buffer[]));
      const drop = await backup(fx.repo, Buffer.concat([palette[1], palette[2], palette[2]] as Buffer[]));
      t.is(indexRefcounts(fx.indexPath).get(sha256(palette[2] as Buffer)), 2);
      await fx.repo.deleteSnapshot(drop.id);
      t.is(fx.repo.getSnapshot(drop.id), undefined);
      await t.throwsAsync(fx.repo.openManifest(drop.id), { instanceOf: Error, message: /no snapshot/ });
      t.deepEqual(referenced(indexRefcounts(fx.indexPath)), referenced(await recount(fx.repo)));
      fx.clock.advance(1000);
      const stored = await fx.storage.stat(fx.repo.storedObjects.chunkKey(sha256(palette[2] as Buffer)));
      const report = await fx.repo.gc();
      t.is(report.chunksDeleted, 1);
      t.is(report.bytesFreed, stored!.size);
      t.is(await fx.storage.stat(fx.repo.storedObjects.chunkKey(sha256(palette[2] as Buffer))), undefined);
      t.true((await restore(fx.repo, keep.id)).equals(Buffer.concat([palette[0], palette[1]] as Buffer[])));
      t.true((await fx.repo.verify({ readData: true })).ok);
      const stats = fx.repo.stats();
      t.is(stats.snapshots, 1);
      t.is(stats.uniqueChunks, 2);
    } finally {
      await fx.cleanup();
    }
  });
}

test('a zstd payload that would decompress beyond the chunker max is refused as TooLarge', async (t) => {
  const backends2 = new Backends();
  const fx = await openFixture(backends2, 'memory');
  try {
    const session = await fx.repo.beginSession('pc1', 'sda');
    const bomb = compress(Buffer.alloc(TEST_CHUNKER.max + 1));
    const err = await t.throwsAsync(
      fx.repo.putChunk(session.id, sha256(Buffer.alloc(TEST_CHUNKER.max + 1)), bomb, 'zstd'),
    );
    t.is((err as { code?: string }).code, 'TooLarge');
    const big = await t.throwsAsync(
      fx.repo.putChunk(
        session.id,
        sha256(Buffer.alloc(64 * 1024 * 1024)),
        compress(Buffer.alloc(64 * 1024 * 1024)),
        'zstd',
      ),
    );
    t.is((big as { code?: string }).code, 'TooLarge');
    const exact = Buffer.alloc(TEST_CHUNKER.max, 3);
    t.true((await fx.repo.putChunk(session.id, sha256(exact), compress(exact), 'zstd')).stored);
  } finally {
    await fx.cleanup();
  }
});

test('restoring one golden image for many machines reads each chunk from storage once', async (t) => {
  const backends2 = new Backends();
  const fx = await openFixture(backends2, 'memory');
  try {
    const rand = seededRandom(7);
    const image = makeImage(rand, 30, makePalette(rand, 10));
    const snap = await backup(fx.repo, image);
    const storage = fx.storage as MemoryStorage;
    await fx.reopen(); // empty cache
    storage.reads = 0;
    const restores = await Promise.all(Array.from({ length: 5 }, () => restore(fx.repo, snap.id)));
    for (const r of restores) t.true(r.equals(image));
    const distinct = new Set(chunkImage(image).map(sha256)).size;
    // One read per distinct chunk plus the five manifests.
    t.is(storage.reads, distinct + 5);
  } finally {
    await fx.cleanup();
  }
});

test('a session unused past its lease is gone, and a commit from it is refused as NotFound', async (t) => {
  const backends2 = new Backends();
  const fx = await openFixture(backends2, 'memory', { sessionLeaseMs: 60_000 });
  try {
    const s = await fx.repo.beginSession('pc1', 'sda');
    fx.clock.advance(59_000);
    fx.repo.touchSession(s.id);
    fx.clock.advance(59_000);
    t.is(fx.repo.touchSession(s.id).id, s.id);
    fx.clock.advance(60_001);
    t.throws(() => fx.repo.touchSession(s.id), { message: /unknown or has expired/ });
    const err = await t.throwsAsync(fx.repo.commit(s.id, bodyOf(manifestFor('pc1', 'sda', []))));
    t.is((err as { code?: string }).code, 'NotFound');
  } finally {
    await fx.cleanup();
  }
});

test('a commit whose manifest names another host or other chunker parameters is refused as InvalidInput', async (t) => {
  const backends2 = new Backends();
  const fx = await openFixture(backends2, 'memory');
  try {
    const s = await fx.repo.beginSession('pc1', 'sda');
    const host = await t.throwsAsync(fx.repo.commit(s.id, bodyOf(manifestFor('pc2', 'sda', []))));
    t.is((host as { code?: string }).code, 'InvalidInput');
    const chunker = await t.throwsAsync(
      fx.repo.commit(
        s.id,
        bodyOf(manifestFor('pc1', 'sda', [], { chunker: { min: 1024, avg: 8192, max: 16384 } })),
      ),
    );
    t.is((chunker as { code?: string }).code, 'InvalidInput');
    const truncated = manifestFor('pc1', 'sda', [Buffer.alloc(100, 1)]);
    const bad = await t.throwsAsync(
      fx.repo.commit(s.id, bodyOf(truncated.subarray(0, truncated.length - 5))),
    );
    t.is((bad as { code?: string }).code, 'InvalidInput');
  } finally {
    await fx.cleanup();
  }
});

test('a repository opened again keeps its id and chunker even when other parameters are passed', async (t) => {
  const backends2 = new Backends();
  const fx = await openFixture(backends2, 'memory');
  try {
    const id = fx.repo.repositoryId;
    t.regex(id, /^[0-9a-f]{64}$/);
    await fx.reopen({ chunker: { min: 2048, avg: 8192, max: 32768 } });
    t.is(fx.repo.repositoryId, id);
    t.deepEqual(fx.repo.chunker, TEST_CHUNKER);
    const empty = new MemoryStorage();
    await t.throwsAsync(
      (await import('../../repo-engine/repository.js')).Repository.open({
        storage: empty,
        indexPath: `${fx.dir}/other.sqlite`,
        create: false,
      }),
      { message: /no repository/ },
    );
  } finally {
    await fx.cleanup();
  }
});

test('a chunk lost from storage is reported missing after reindex, and the next upload of it repairs the repository', async (t) => {
  const fx = await openFixture(new Backends(), 'memory');
  try {
    const data = Buffer.alloc(4096, 4);
    const snap = await backup(fx.repo, data);
    await fx.storage.delete(fx.repo.storedObjects.chunkKey(sha256(data)));
    await fx.repo.reindex();
    t.true(fx.logs.some((l) => /missing from storage/.test(l)));
    const s = await fx.repo.beginSession('pc1', 'sda');
    t.deepEqual(await fx.repo.filterMissing(s.id, [sha256(data)]), [sha256(data)]);
    t.true((await fx.repo.putChunk(s.id, sha256(data), data, 'raw')).stored);
    t.true((await restore(fx.repo, snap.id)).equals(data));
    t.true((await fx.repo.verify({ readData: true })).ok);
  } finally {
    await fx.cleanup();
  }
});

for (const encryption of ['none', 'aes-256-gcm'] as const) {
  test(`${encryption}: verify --read-data that reads a damaged chunk good again clears its damage record`, async (t) => {
    const fx = await openFixture(backends, 'memory', { encryption });
    try {
      const image = Buffer.alloc(4096 * 2);
      image.fill(1, 0, 4096).fill(2, 4096);
      const snap = await backup(fx.repo, image);
      const id = sha256(image.subarray(0, 4096));
      const object = (fx.storage as MemoryStorage).objects.get(fx.repo.storedObjects.chunkKey(id));
      if (!object) throw new Error('the chunk is not stored under its key');
      const good = object.data;
      object.data = Buffer.from(good);
      object.data[object.data.length - 1] ^= 1;
      await t.throwsAsync(fx.repo.readChunk(id), { code: 'Corrupt' });
      const damaged = await fx.repo.verify({ readData: true });
      t.deepEqual(
        damaged.problems.map((p) => [p.chunk, p.kind]),
        [[id, 'corrupt']],
      );

      // The good copy is back (say, from a storage-level backup): a quick verify reads nothing, so the
      // record stands; a verify that reads the copy good again reports it healed and drops the record.
      object.data = good;
      t.deepEqual(
        (await fx.repo.verify({ readData: false })).problems.map((p) => p.chunk),
        [id],
      );
      const read = await fx.repo.verify({ readData: true });
      t.deepEqual(read.problems, []);
      t.true(read.ok);
      t.deepEqual(
        read.healed.map((h) => h.chunk),
        [id],
      );
      t.deepEqual(read.healedSnapshots, [snap.id]);
      const after = await fx.repo.verify({ readData: false });
      t.true(after.ok);
      t.deepEqual(after.healed, []);
    } finally {
      await fx.cleanup();
    }
  });
}

test('after a damage report the next read of the chunk goes to storage, whatever was cached', async (t) => {
  const fx = await openFixture(backends, 'memory', { encryption: 'none' });
  try {
    const data = Buffer.alloc(4000, 11);
    const id = sha256(data);
    const key = fx.repo.storedObjects.chunkKey(id);
    await backup(fx.repo, data);
    // The first cached read (one that reads into the cache's own memory) is handed a damaged copy, as a read
    // under way while the copy was being replaced could have been; storage itself stays good.
    let damageNext = true;
    const storage = hookedStorage(fx.storage, {
      async getBytes(k, range, alloc) {
        const bytes = await fx.storage.getBytes(k, range, alloc);
        if (damageNext && k === key && alloc !== undefined) {
          damageNext = false;
          bytes[bytes.length - 1] ^= 0xff;
        }
        return bytes;
      },
    });
    await fx.reopen({ storage });
    const bad = await fx.repo.readStoredChunkUnverified(id);
    t.false(damageNext, 'the read went through the cache');
    t.is(await fx.repo.reportDamage(undefined, id, 'the restore found it wrong'), 'good');
    t.false((await fx.repo.readStoredChunkUnverified(id)).payload.equals(bad.payload));
    t.true((await fx.repo.readChunk(id)).equals(data));
    const s = await fx.repo.beginSession('pc2', 'sda');
    t.deepEqual(await fx.repo.filterMissing(s.id, [id]), [], 'not marked damaged');
  } finally {
    await fx.cleanup();
  }
});
