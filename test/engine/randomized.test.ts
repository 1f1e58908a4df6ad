import test from 'ava';
import {
  Backends,
  backup,
  indexRefcounts,
  makeImage,
  makePalette,
  openFixture,
  recount,
  referenced,
  restore,
  seededRandom,
  sha256,
} from '../helpers/engine-fixtures.js';

const SEEDS = [11, 22, 33];

for (const seed of SEEDS) {
  test(`seed ${seed}: random commits, deletes, forgets and gc leave refcounts equal to a recount and every snapshot bit-exact`, async (t) => {
    const fx = await openFixture(new Backends(), 'memory', { gcGraceMs: 0, sessionLeaseMs: 1e12 });
    try {
      const rand = seededRandom(seed);
      const palette = makePalette(rand, 24);
      const images = new Map<string, string>(); // snapshot id -> sha256 of its image
      const hosts = ['h1', 'h2', 'h3'];
      for (let step = 0; step < 60; step++) {
        fx.clock.advance(Math.floor(rand() * 36 * 3_600_000));
        const op = rand();
        const live = fx.repo.listSnapshots();
        if (op < 0.5 || live.length === 0) {
          const image = makeImage(rand, 1 + Math.floor(rand() * 12), palette);
          const snap = await backup(fx.repo, image, {
            host: hosts[Math.floor(rand() * hosts.length)],
            tenant: rand() < 0.3 ? 'other' : undefined,
            time: new Date(fx.clock.now()).toISOString(),
          });
          images.set(snap.id, sha256(image));
        } else if (op < 0.7) {
          const victim = live[Math.floor(rand() * live.length)];
          if (victim) await fx.repo.deleteSnapshot(victim.id);
        } else if (op < 0.85) {
          await fx.repo.applyForget(fx.repo.planForget({ last: 2, daily: 2, weekly: 1 }));
        } else {
          await fx.repo.gc();
        }
      }
      await fx.repo.gc();
      t.deepEqual(referenced(indexRefcounts(fx.indexPath)), referenced(await recount(fx.repo)));
      const remaining = fx.repo.listSnapshots();
      t.true(remaining.length > 0);
      for (const s of remaining)
        t.is(sha256(await restore(fx.repo, s.id)), images.get(s.id) ?? 'not a snapshot this test made');
      const report = await fx.repo.verify({ readData: true });
      t.true(report.ok, JSON.stringify(report.problems.slice(0, 3)));
      // Nothing unreferenced survives a gc with no grace and no open session.
      t.deepEqual(
        [...indexRefcounts(fx.indexPath).values()].filter((n) => n === 0),
        [],
      );
      const before = indexRefcounts(fx.indexPath);
      await fx.repo.reindex();
      t.deepEqual(indexRefcounts(fx.indexPath), before);
    } finally {
      await fx.cleanup();
    }
  });
}
