import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { backup, call, chunkOf, type TestChunk } from '../helpers/api-client.js';
import { runCli } from '../helpers/backup-e2e.js';
import { startTestServer } from '../helpers/server.js';

// Protected snapshots through the real CLI and server: forget (policy and ids), DELETE and gc leave them
// alone, the flag shows in `snapshots --json` and the API, survives an index rebuild from storage, and
// unprotect makes the snapshot removable again.

const NIGHTS = ['2026-11-26', '2026-11-27', '2026-11-28'];

for (const storage of ['local', 's3'] as const) {
  test(`[${storage}] a protected snapshot survives forget --keep-last 1 --prune, DELETE and reindex; unprotect frees it`, async (t) => {
    const srv = await startTestServer({ storage, gcGraceMs: 0 });
    try {
      const env = { DISKVAULT_SERVER: srv.url, DISKVAULT_TOKEN: srv.adminToken };
      const ids: string[] = [];
      const own: TestChunk[] = [];
      for (const night of NIGHTS) {
        const mine = chunkOf(`protect night ${night}`);
        own.push(mine);
        // Dated nights in the past are imports: only an admin token may commit a backdated time.
        const { snapshot } = await backup(srv.url, srv.adminToken, 'web1', 'sda', [chunkOf('shared'), mine], {
          time: `${night}T02:00:00.000Z`,
        });
        ids.push(snapshot.id as string);
      }
      const listed = async () =>
        JSON.parse((await runCli(['snapshots', '--json'], env)).stdout) as {
          id: string;
          protected: boolean;
        }[];

      const p = await runCli(['protect', ids[0].slice(0, 10), '--json'], env);
      t.is(p.code, 0, p.stderr);
      t.deepEqual(
        JSON.parse(p.stdout).protect.map((s: { id: string; protected: boolean }) => [s.id, s.protected]),
        [[ids[0], true]],
      );
      t.deepEqual(
        (await listed()).map((s) => s.protected),
        [true, false, false],
      );
      const api = await call(srv.url, srv.adminToken, 'GET', `/v1/snapshots/${ids[0]}`);
      t.true(api.json.snapshot.protected);
      // Protecting twice is fine.
      t.is((await runCli(['protect', ids[0]], env)).code, 0);

      // forget --keep-last 1 --prune: the newest kept by the rule, the protected one kept, the middle one goes.
      const forget = await runCli(['forget', '--keep-last', '1', '--prune', '--json'], env);
      t.is(forget.code, 0, forget.stderr);
      const out = JSON.parse(forget.stdout);
      t.is(out.removed, 1);
      const keep = out.plan.groups[0].keep.map((k: { snapshot: { id: string }; reasons: string[] }) => [
        k.snapshot.id,
        k.reasons,
      ]);
      t.deepEqual(keep, [
        [ids[2], ['last snapshot']],
        [ids[0], ['protected']],
      ]);
      t.deepEqual(
        out.plan.groups[0].remove.map((s: { id: string }) => s.id),
        [ids[1]],
      );
      t.is(out.gc.chunksDeleted, 1);
      t.deepEqual(
        (await listed()).map((s) => s.id),
        [ids[0], ids[2]],
      );
      // The protected snapshot's own chunk survived gc.
      const chunk = await call(srv.url, srv.adminToken, 'GET', `/v1/chunks/${own[0].id}`);
      t.is(chunk.status, 200);
      t.deepEqual(chunk.bytes, own[0].data);

      // The human forget output names the reason.
      const human = await runCli(['forget', '--keep-last', '1', '--dry-run'], env);
      t.regex(human.stdout, new RegExp(`keep    ${ids[0].slice(0, 12)}  \\S+  protected`));

      // DELETE: 409 with the reason; forget by id reports it kept.
      const del = await call(srv.url, srv.adminToken, 'DELETE', `/v1/snapshots/${ids[0]}`);
      t.is(del.status, 409);
      t.is(del.json.code, 'Conflict');
      t.is(del.json.details.reason, 'protected');
      const byId = await runCli(['forget', ids[0], '--json'], env);
      t.is(byId.code, 0, byId.stderr);
      const byIdOut = JSON.parse(byId.stdout);
      t.deepEqual(byIdOut.removed, []);
      t.deepEqual(
        byIdOut.kept.map((k: { snapshot: { id: string }; reasons: string[] }) => [k.snapshot.id, k.reasons]),
        [[ids[0], ['protected']]],
      );
      const byIdHuman = await runCli(['forget', ids[0]], env);
      t.regex(
        byIdHuman.stdout,
        new RegExp(`^kept    ${ids[0].slice(0, 12)}  web1 sda  \\S+  protected$`, 'm'),
      );
      t.regex(byIdHuman.stdout, /^removed 0 snapshots$/m);

      // The flag lives in storage: a rebuilt index still has it.
      await srv.repo.reindex();
      t.true(srv.repo.getSnapshot(ids[0])?.protected);
      t.false(srv.repo.getSnapshot(ids[2])?.protected);

      const u = await runCli(['unprotect', ids[0]], env);
      t.is(u.code, 0, u.stderr);
      t.regex(u.stdout, new RegExp(`^unprotected ${ids[0].slice(0, 12)}  web1 sda`, 'm'));
      await srv.repo.reindex();
      t.false(srv.repo.getSnapshot(ids[0])?.protected);
      const gone = await runCli(['forget', ids[0], '--prune', '--json'], env);
      t.is(gone.code, 0, gone.stderr);
      t.deepEqual(
        JSON.parse(gone.stdout).removed.map((s: { id: string }) => s.id),
        [ids[0]],
      );
      t.deepEqual(
        (await listed()).map((s) => s.id),
        [ids[2]],
      );
    } finally {
      await srv.stop();
    }
  });
}

test('protection follows storage across restarts: a lost index is rebuilt with it, a removed marker lifts it', async (t) => {
  const dataDir = await mkdtemp(join(tmpdir(), 'dv-protect-'));
  let srv = await startTestServer({ storage: 'local', dataDir });
  try {
    const agent = await srv.makeToken('agent', ['web1']);
    const a = (await backup(srv.url, agent, 'web1', 'sda', [chunkOf('restart-a')])).snapshot.id as string;
    const b = (await backup(srv.url, agent, 'web1', 'sda', [chunkOf('restart-b')])).snapshot.id as string;
    for (const id of [a, b])
      t.is((await call(srv.url, srv.adminToken, 'PUT', `/v1/snapshots/${id}/protection`)).status, 200);

    // Lose the index: the rebuild from storage restores both flags.
    const restart = async () => {
      await srv.stop();
      srv = await startTestServer({ storage: 'local', dataDir });
    };
    await srv.stop();
    await rm(join(dataDir, 'index.sqlite'), { force: true });
    srv = await startTestServer({ storage: 'local', dataDir });
    t.true(srv.repo.getSnapshot(a)?.protected);
    t.true(srv.repo.getSnapshot(b)?.protected);
    t.true(srv.logs.some((l) => /rebuilding it from storage/.test(l)));

    // A marker removed behind the server's back (an unprotect cut short after its storage step): the next
    // start follows storage.
    await rm(join(dataDir, 'storage', 'protected', b));
    await restart();
    t.true(srv.repo.getSnapshot(a)?.protected);
    t.false(srv.repo.getSnapshot(b)?.protected);
    t.is((await call(srv.url, srv.adminToken, 'DELETE', `/v1/snapshots/${b}`)).status, 204);
    t.is((await call(srv.url, srv.adminToken, 'DELETE', `/v1/snapshots/${a}`)).status, 409);

    // A tenant admin of another tenant cannot see, so cannot protect, this tenant's snapshot; an agent may not.
    const other = await srv.makeToken('admin', [], 'other');
    t.is((await call(srv.url, other, 'PUT', `/v1/snapshots/${a}/protection`)).status, 404);
    t.is((await call(srv.url, agent, 'PUT', `/v1/snapshots/${a}/protection`)).status, 403);
    t.is(
      (await call(srv.url, srv.adminToken, 'PUT', `/v1/snapshots/${'0'.repeat(64)}/protection`)).status,
      404,
    );
  } finally {
    await srv.stop();
    await rm(dataDir, { recursive: true, force: true });
  }
});
