/**
 * Engine figures (`node dist/bench/engine.js`): filterMissing throughput against an index of 1 million
 * chunks, index bytes per million chunks, commit and reindex time per 1,000 snapshots on local storage.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { encodeManifest } from '../repo-engine/manifest-codec.js';
import { Repository } from '../repo-engine/repository.js';
import { openLocalStorage } from '../storage-adapters/local.js';

const CHUNKS = Number(process.env.BENCH_CHUNKS ?? 1_000_000);
const QUERY = 100_000;
const SNAPSHOTS = 1000;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function main(): Promise<void> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'dv-bench-engine-'));
  try {
    const storage = await openLocalStorage(path.join(dir, 'storage'));
    const indexPath = path.join(dir, 'index.sqlite');
    let repo = await Repository.open({ storage, indexPath });
    await repo.close();

    // 1 million chunk rows, inserted directly: the bench is about lookups, not uploads.
    const ids: Buffer[] = [];
    let t0 = performance.now();
    const db = new Database(indexPath);
    db.pragma('journal_mode = WAL');
    const insChunk = db.prepare(
      'INSERT INTO chunks (id, refcount, raw_size, stored_size, touched_at) VALUES (?, 1, 1048576, 600000, 0)',
    );
    const insOwner = db.prepare("INSERT INTO owners (chunk, tenant) VALUES (?, 'default')");
    const batch = db.transaction((n: number) => {
      for (let i = 0; i < n; i++) {
        const id = randomBytes(32);
        ids.push(id);
        insChunk.run(id);
        insOwner.run(id);
      }
    });
    for (let done = 0; done < CHUNKS; done += 100_000) batch(Math.min(100_000, CHUNKS - done));
    db.pragma('wal_checkpoint(TRUNCATE)');
    db.close();
    const insertS = (performance.now() - t0) / 1000;
    const indexBytes = (await stat(indexPath)).size;

    t0 = performance.now();
    repo = await Repository.open({ storage, indexPath });
    const openS = (performance.now() - t0) / 1000;
    const session = await repo.beginSession('bench', 'sda');
    const query = Array.from({ length: QUERY }, (_, i) =>
      i % 2 === 0
        ? (ids[(i * 7919) % ids.length] as Buffer).toString('hex')
        : randomBytes(32).toString('hex'),
    );
    await repo.filterMissing(session.id, query.slice(0, 1000)); // warm statements
    t0 = performance.now();
    const missing = await repo.filterMissing(session.id, query);
    const filterS = (performance.now() - t0) / 1000;
    if (missing.length !== QUERY / 2) throw new Error(`expected ${QUERY / 2} missing, got ${missing.length}`);
    await repo.close();

    // 1,000 small snapshots (20 entries each over 50 shared chunks), committed, then reindexed.
    const dir2 = path.join(dir, 'r2');
    const storage2 = await openLocalStorage(path.join(dir2, 'storage'));
    const repo2 = await Repository.open({
      storage: storage2,
      indexPath: path.join(dir2, 'index.sqlite'),
      chunker: { min: 1024, avg: 4096, max: 16384 },
    });
    const chunks = Array.from({ length: 50 }, () => randomBytes(4096));
    const s0 = await repo2.beginSession('h', 'sda');
    for (const c of chunks) await repo2.putChunk(s0.id, sha(c), c, 'raw');
    t0 = performance.now();
    for (let i = 0; i < SNAPSHOTS; i++) {
      const picked = Array.from({ length: 20 }, (_, j) => chunks[(i * 3 + j) % chunks.length] as Buffer);
      const s = i === 0 ? s0 : await repo2.beginSession('h', 'sda');
      const manifest = encodeManifest(
        {
          formatVersion: 1,
          host: 'h',
          disk: 'sda',
          time: new Date(Date.UTC(2024, 0, 1) + i * 3_600_000).toISOString(),
          size: 20 * 4096,
          sha256: sha(Buffer.concat(picked)),
          chunker: repo2.chunker,
          tags: [],
          unreadable: [],
          sourceFormat: 'raw',
          chunkCount: 20,
        },
        picked.map((c) => ({ id: sha(c), length: c.length })),
      );
      await repo2.commit(
        s.id,
        (async function* () {
          yield manifest;
        })(),
      );
    }
    const commitS = (performance.now() - t0) / 1000;
    t0 = performance.now();
    const re = await repo2.reindex();
    const reindexS = (performance.now() - t0) / 1000;
    await repo2.close();

    const mb = (n: number) => (n / 1024 / 1024).toFixed(1);
    console.log(
      `index: ${CHUNKS.toLocaleString('en')} chunks inserted in ${insertS.toFixed(1)} s; file ${mb(indexBytes)} MiB = ${mb((indexBytes * 1_000_000) / CHUNKS)} MiB per million chunks`,
    );
    console.log(
      `open with integrity_check over ${CHUNKS.toLocaleString('en')} chunks: ${openS.toFixed(2)} s`,
    );
    console.log(
      `filterMissing: ${QUERY.toLocaleString('en')} ids (half present) in ${(filterS * 1000).toFixed(0)} ms = ${Math.round(QUERY / filterS).toLocaleString('en')} ids/s`,
    );
    console.log(`commit: ${SNAPSHOTS} snapshots of 20 chunks in ${commitS.toFixed(2)} s`);
    console.log(
      `reindex: ${re.snapshots} snapshots, ${re.chunks} chunks in ${reindexS.toFixed(2)} s per 1,000 snapshots (local storage)`,
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
