import test from 'ava';
import { backup, chunkOf } from '../helpers/api-client.js';
import { runCli } from '../helpers/backup-e2e.js';
import { startTestServer } from '../helpers/server.js';

// restic's `forget ID...` through the real CLI and server: named snapshots go, and nothing goes when one of
// the names is wrong.

test('forget SNAPSHOT... removes exactly the named snapshots, resolving every name before removing any', async (t) => {
  const srv = await startTestServer({ storage: 'local', gcGraceMs: 0 });
  try {
    const env = { DISKVAULT_SERVER: srv.url, DISKVAULT_TOKEN: srv.adminToken };
    const ids: string[] = [];
    for (const night of ['2026-11-26', '2026-11-27', '2026-11-28']) {
      const chunks = [chunkOf('shared'), chunkOf(`night ${night}`)];
      // Nights in the past: an import, which needs an admin token.
      const { snapshot } = await backup(srv.url, srv.adminToken, 'web1', 'sda', chunks, {
        time: `${night}T02:00:00.000Z`,
      });
      ids.push(snapshot.id as string);
    }
    const list = async () => {
      const r = await runCli(['snapshots', '--json'], env);
      return (JSON.parse(r.stdout) as { id: string }[]).map((s) => s.id);
    };

    // A wrong name among right ones: refused, and the right ones stay.
    const typo = await runCli(['forget', ids[0], 'ffffffff'], env);
    t.is(typo.code, 1);
    t.regex(typo.stderr, /no snapshot id starts with ffffffff/);
    t.deepEqual(await list(), ids);

    const mixed = await runCli(['forget', ids[0], '--keep-last', '1'], env);
    t.is(mixed.code, 2);
    t.regex(mixed.stderr, /give snapshot ids or a policy \(--keep-last\), not both/);

    const dry = await runCli(['forget', ids[0].slice(0, 10), '--dry-run', '--json'], env);
    t.is(dry.code, 0, dry.stderr);
    t.deepEqual(
      JSON.parse(dry.stdout).wouldRemove.map((s: { id: string }) => s.id),
      [ids[0]],
    );
    t.deepEqual(await list(), ids);

    // A prefix and `latest` (the 28th), with gc: the two chunks only they named are freed.
    const done = await runCli(
      ['forget', ids[0].slice(0, 10), 'latest', '--host', 'web1', '--disk', 'sda', '--prune', '--json'],
      env,
    );
    t.is(done.code, 0, done.stderr);
    const out = JSON.parse(done.stdout);
    t.deepEqual(
      out.removed.map((s: { id: string }) => s.id),
      [ids[0], ids[2]],
    );
    t.is(out.gc.chunksDeleted, 2);
    t.deepEqual(await list(), [ids[1]]);

    const human = await runCli(['forget', ids[1]], env);
    t.is(human.code, 0, human.stderr);
    t.regex(
      human.stdout,
      new RegExp(`^removed ${ids[1].slice(0, 12)}  web1 sda  2026-11-27T02:00:00.000Z$`, 'm'),
    );
    t.regex(human.stdout, /^removed 1 snapshots$/m);
    t.deepEqual(await list(), []);
  } finally {
    await srv.stop();
  }
});
