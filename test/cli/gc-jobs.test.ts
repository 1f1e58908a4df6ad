import test from 'ava';
import { backup, call, chunkOf } from '../helpers/api-client.js';
import { runCli } from '../helpers/backup-e2e.js';
import { startTestServer } from '../helpers/server.js';

// gc and forget --prune run as server jobs that the CLI polls, as verify does: JSON progress lines on
// stderr with --json, the same result on stdout as when they answered at once, and the holders named.

test('gc and forget --prune run as jobs: progress lines, the old results, and what held gc back', async (t) => {
  const srv = await startTestServer({ storage: 'local', gcGraceMs: 0 });
  t.teardown(() => srv.stop());
  const agent = await srv.makeToken('agent', ['web1']);
  const env = { DISKVAULT_SERVER: srv.url, DISKVAULT_TOKEN: srv.adminToken };
  const ids: string[] = [];
  for (const night of ['2026-11-26', '2026-11-27', '2026-11-28']) {
    // Dated nights in the past are imports: only an admin token may commit a backdated time.
    const { snapshot } = await backup(
      srv.url,
      srv.adminToken,
      'web1',
      'sda',
      [chunkOf('shared'), chunkOf(night)],
      {
        time: `${night}T02:00:00.000Z`,
      },
    );
    ids.push(snapshot.id as string);
  }
  // The oldest night is held by a lease while it is forgotten.
  const lease = await call(srv.url, agent, 'POST', `/v1/snapshots/${ids[0]}/lease`, { json: {} });
  t.is(lease.status, 201);

  const forget = await runCli(['forget', '--keep-last', '1', '--prune', '--json'], env);
  t.is(forget.code, 0, forget.stderr);
  const out = JSON.parse(forget.stdout);
  t.is(out.removed, 2);
  t.deepEqual(out.plan.groups[0].remove.map((s: { id: string }) => s.id).sort(), [ids[0], ids[1]].sort());
  // The second night's own chunk goes; the first night's is held by the lease.
  t.is(out.gc.chunksDeleted, 1);
  t.is(out.gc.chunksHeld, 1);
  t.deepEqual(
    out.gc.holders.map((h: { kind: string; snapshot: string; chunks: number }) => [
      h.kind,
      h.snapshot,
      h.chunks,
    ]),
    [['lease', ids[0], 1]],
  );
  const progress = forget.stderr
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l));
  t.true(progress.length >= 1, forget.stderr);
  t.true(progress.every((p) => p.type === 'progress' && /^[0-9a-f]{64}$/.test(p.job)));

  const human = await runCli(['gc'], env);
  t.is(human.code, 0, human.stderr);
  t.regex(
    human.stdout,
    /^gc: deleted 0 chunks \(0 B\) and 0 orphans, kept 1 unreferenced \(1 held by open sessions and snapshot leases\)/m,
  );
  t.regex(
    human.stdout,
    new RegExp(
      `^  kept 1 for lease [0-9a-f]{8} \\(web1/sda, snapshot ${ids[0].slice(0, 12)}\\), until `,
      'm',
    ),
  );

  t.is((await call(srv.url, agent, 'DELETE', `/v1/leases/${lease.json.leaseId}`)).status, 204);
  const gc = await runCli(['gc', '--json'], env);
  t.is(gc.code, 0, gc.stderr);
  const report = JSON.parse(gc.stdout);
  t.is(report.chunksDeleted, 1);
  t.deepEqual(report.holders, []);

  // An agent token may not start gc: one line, exit 1.
  const refused = await runCli(['gc'], { ...env, DISKVAULT_TOKEN: agent });
  t.is(refused.code, 1);
  t.regex(refused.stderr, /global admin/);
  t.notRegex(refused.stderr, /\n\s+at /);
});
