import test from 'ava';
import Database from 'better-sqlite3';
import { IndexDb } from '../../repo-engine/index-db.js';
import { MANIFEST_ENTRY_BYTES } from '../../repo-engine/manifest-codec.js';
import type { Repository } from '../../repo-engine/repository.js';
import {
  Backends,
  backup,
  indexRefcounts,
  manifestEntries,
  openFixture,
  recount,
  referenced,
  restore,
  seededRandom,
} from '../helpers/engine-fixtures.js';

/**
 * A delete lowers its snapshot's counts in pieces of 1,024 chunks (repository.ts, REFERENCE_SLICE), the event
 * loop getting a turn between them. These snapshots have about 1,500 chunks of their own (TEST_CHUNKER cuts
 * 4 KiB on average), so a delete takes two pieces.
 */
const backends = new Backends();
test.after.always(() => backends.stop());

function randomImage(seed: number, bytes: number): Buffer {
  const rand = seededRandom(seed);
  const out = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i++) out[i] = Math.floor(rand() * 256);
  return out;
}

/** The counts of `ids`, read through a connection of its own, as another reader of the index sees them. */
function countsOf(indexPath: string, ids: string[]): number[] {
  const db = new Database(indexPath, { readonly: true, fileMustExist: true });
  try {
    const get = db.prepare('SELECT refcount FROM chunks WHERE id = ?').pluck();
    return ids.map((id) => get.get(Buffer.from(id, 'hex')) as number);
  } finally {
    db.close();
  }
}

/** Two snapshots: `keep` of 64 KiB (`shared`), `drop` of about 1,500 chunks of its own (`own`) then `shared`. */
async function keepAndDrop(repo: Repository, seed: number) {
  const shared = randomImage(seed, 64 * 1024);
  const keep = await backup(repo, shared, { disk: 'sdb' });
  const own = randomImage(seed + 1, 6 * 1024 * 1024);
  const drop = await backup(repo, Buffer.concat([own, shared]));
  return { shared, own, keep, drop };
}

for (const name of ['memory', 'local'] as const) {
  test(`${name}: a delete lowers its counts in pieces that others see committed one by one, and ends exact`, async (t) => {
    const fx = await openFixture(backends, name);
    try {
      const { shared, keep, drop } = await keepAndDrop(fx.repo, 71);
      const keepIds = new Set((await manifestEntries(fx.repo, keep.id)).map((e) => e.id));
      const ownIds = [...new Set((await manifestEntries(fx.repo, drop.id)).map((e) => e.id))].filter(
        (id) => !keepIds.has(id),
      );
      t.true(ownIds.length > 1024 && ownIds.length < 2048, `${ownIds.length} chunks of its own`);
      t.true(countsOf(fx.indexPath, ownIds).every((n) => n === 1));

      // Between two pieces, a reader sees some of the snapshot's own chunks lowered and the rest not yet.
      let done = false;
      let partial = 0;
      const watch = (): void => {
        if (done) return;
        const zero = countsOf(fx.indexPath, ownIds).filter((n) => n === 0).length;
        if (zero > 0 && zero < ownIds.length) partial++;
        setImmediate(watch);
      };
      setImmediate(watch);
      await fx.repo.deleteSnapshot(drop.id).finally(() => {
        done = true;
      });
      t.true(partial > 0, 'no reader saw a state between two pieces');

      t.true(countsOf(fx.indexPath, ownIds).every((n) => n === 0));
      t.deepEqual(referenced(indexRefcounts(fx.indexPath)), referenced(await recount(fx.repo)));
      t.true((await restore(fx.repo, keep.id)).equals(shared));
      t.false(
        fx.logs.some((l) => l.includes('had no count to lower')),
        fx.logs.join('\n'),
      );
    } finally {
      await fx.cleanup();
    }
  });

  test(`${name}: a delete stopped after its first piece is undone at the next open, with exact counts`, async (t) => {
    const fx = await openFixture(backends, name);
    try {
      const { shared, own, keep, drop } = await keepAndDrop(fx.repo, 73);
      const before = indexRefcounts(fx.indexPath);
      const snapshots = fx.repo.listSnapshots();
      const entries = await manifestEntries(fx.repo, drop.id);
      await fx.repo.close();

      // What a crash after the first piece leaves: the row gone, some counts lowered, the manifest stored.
      const meta = new Database(fx.indexPath, { readonly: true });
      const repositoryId = meta.prepare("SELECT value FROM meta WHERE key = 'repository_id'").pluck().get();
      meta.close();
      const index = IndexDb.openExisting(fx.indexPath, String(repositoryId));
      const staging = index.stageReferences();
      const batch = Buffer.alloc(entries.length * MANIFEST_ENTRY_BYTES);
      entries.forEach((e, i) => {
        Buffer.from(e.id, 'hex').copy(batch, i * MANIFEST_ENTRY_BYTES);
      });
      staging.add(batch);
      t.true(index.beginRemoveSnapshot(drop.id, staging, Date.now()));
      const piece = staging.lowerNext(undefined, 1024);
      t.not(piece.last, undefined);
      staging.drop();
      index.close();
      t.notDeepEqual(indexRefcounts(fx.indexPath), before);

      await fx.reopen();
      t.true(
        fx.logs.some((l) => /not in the index .*rebuilding the index from storage/.test(l)),
        fx.logs.join('\n'),
      );
      t.deepEqual(fx.repo.listSnapshots(), snapshots);
      t.deepEqual(indexRefcounts(fx.indexPath), before);
      t.true((await restore(fx.repo, drop.id)).equals(Buffer.concat([own, shared])));

      // And the delete, run again, finishes.
      await fx.repo.deleteSnapshot(drop.id);
      t.deepEqual(referenced(indexRefcounts(fx.indexPath)), referenced(await recount(fx.repo)));
      t.true((await restore(fx.repo, keep.id)).equals(shared));
    } finally {
      await fx.cleanup();
    }
  });
}
