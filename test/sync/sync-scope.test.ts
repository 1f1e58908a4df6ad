import test from 'ava';
import { planSync } from '../../agent/sync/plan.js';
import type { SnapshotInfo } from '../../api/protocol.js';
import { backup, call, chunkOf, missingFor } from '../helpers/api-client.js';
import { corruptStoredChunk, runCli } from '../helpers/backup-e2e.js';
import { startTestServer } from '../helpers/server.js';

// diskvault sync's edges over two real servers with small synthetic snapshots: tenants kept or folded into
// a tenant admin's, a chunk damaged on the source (that snapshot fails, nothing of it is committed, the rest
// is copied), and the tokens each side needs.

const summaryOf = (stdout: string) =>
  JSON.parse(stdout.split('\n').find((l) => l.startsWith('{"type":"summary"')) as string);

test('a global destination admin keeps each tenant; a tenant admin takes every copy into its tenant', async (t) => {
  const src = await startTestServer({ storage: 'local' });
  const dst = await startTestServer({ storage: 'local' });
  try {
    // acme's snapshot carries an old --time, an import: that needs acme's admin, not its agent.
    const a = await src.makeToken('admin', [], 'acme');
    const b = await src.makeToken('agent', ['web9'], 'zeta');
    const sa = (
      await backup(src.url, a, 'web1', 'sda', [chunkOf('acme-1'), chunkOf('both')], {
        time: '2019-07-01T03:04:05.678Z',
        tags: ['before-upgrade', 'weekly'],
        unreadable: [[4096, 512]],
        sourceFormat: 'qcow2',
      })
    ).snapshot;
    const sb = (await backup(src.url, b, 'web9', 'sda', [chunkOf('zeta-1'), chunkOf('both')])).snapshot;
    const reader = await src.makeToken('reader');

    const global = await runCli(['sync', '--from', src.url, '--from-token', reader, '--json'], {
      DISKVAULT_SERVER: dst.url,
      DISKVAULT_TOKEN: dst.adminToken,
    });
    t.is(global.code, 0, global.stderr);
    t.is(summaryOf(global.stdout).snapshotsCopied, 2);
    // The chunk both tenants hold is stored once but copied for each tenant (ownership is proven by upload).
    t.is(summaryOf(global.stdout).chunksCopied, 4);
    t.is(dst.repo.getSnapshot(sa.id)?.tenant, 'acme');
    // Everything the snapshot says about itself is kept, its id first. receivedAt is not the snapshot's
    // word but the receiving server's own clock (repo-engine/snapshot-time.ts): the copy's is its arrival.
    const {
      protected: _p,
      receivedAt: copyReceived,
      ...copied
    } = dst.repo.getSnapshot(sa.id) as SnapshotInfo;
    const {
      protected: _q,
      receivedAt: sourceReceived,
      ...original
    } = src.repo.getSnapshot(sa.id) as SnapshotInfo;
    t.deepEqual(copied, original);
    t.true(Date.parse(copyReceived as string) >= Date.parse(sourceReceived as string));
    t.deepEqual(copied.unreadable, [[4096, 512]]);
    t.is(copied.time, '2019-07-01T03:04:05.678Z');
    t.is(dst.repo.getSnapshot(sb.id)?.tenant, 'zeta');

    // A tenant-scoped destination admin, and a reader of one source tenant: copies land in the admin's tenant.
    const dst2 = await startTestServer({ storage: 'local' });
    try {
      const tenantAdmin = await dst2.makeToken('admin', [], 'offsite');
      const acmeReader = await src.makeToken('reader', [], 'acme');
      const scoped = await runCli(
        ['sync', '--from', src.url, '--from-token', acmeReader, '--json', '--remove-vanished'],
        { DISKVAULT_SERVER: dst2.url, DISKVAULT_TOKEN: tenantAdmin },
      );
      t.is(scoped.code, 0, scoped.stderr);
      t.deepEqual(
        dst2.repo.listSnapshots().map((s) => [s.id, s.tenant]),
        [[sa.id, 'offsite']],
      );
      // Chunks of the copy are readable by the tenant's tokens.
      const restore = await call(dst2.url, tenantAdmin, 'GET', `/v1/chunks/${chunkOf('acme-1').id}`);
      t.is(restore.status, 200);
    } finally {
      await dst2.stop();
    }
  } finally {
    await src.stop();
    await dst.stop();
  }
});

test("a snapshot another tenant of the destination already holds under its id is a failure, not 'copied'", async (t) => {
  const src = await startTestServer({ storage: 'local' });
  const dst = await startTestServer({ storage: 'local' });
  try {
    const snap = (await backup(src.url, src.adminToken, 'web1', 'sda', [chunkOf('one'), chunkOf('two')]))
      .snapshot;
    const reader = await src.makeToken('reader');
    const cust1 = await dst.makeToken('admin', [], 'cust1');
    const cust2 = await dst.makeToken('admin', [], 'cust2');
    const into = (token: string) =>
      runCli(['sync', '--from', src.url, '--from-token', reader, '--json'], {
        DISKVAULT_SERVER: dst.url,
        DISKVAULT_TOKEN: token,
      });
    const first = await into(cust1);
    t.is(first.code, 0, first.stderr);
    t.is(summaryOf(first.stdout).snapshotsCopied, 1);
    // The id is taken at the destination, by cust1's copy, which cust2 cannot see: nothing is copied for it.
    const second = await into(cust2);
    t.is(second.code, 1, second.stdout);
    const s = summaryOf(second.stdout);
    t.is(s.snapshotsCopied, 0);
    t.is(s.snapshotsFailed, 1);
    t.is(s.failures[0].snapshot, snap.id);
    t.is(s.failures[0].code, 'Conflict');
    t.deepEqual((await call(dst.url, cust2, 'GET', '/v1/snapshots')).json.snapshots, []);
  } finally {
    await src.stop();
    await dst.stop();
  }
});

test('a chunk damaged on the source fails its snapshot only; nothing of it is committed; exit 1', async (t) => {
  const src = await startTestServer({ storage: 'local' });
  const dst = await startTestServer({ storage: 'local' });
  try {
    // Dated snapshots in the past are imports: the source's admin token commits them.
    const admin = src.adminToken;
    const bad = chunkOf('will-rot');
    const s1 = (
      await backup(src.url, admin, 'web1', 'sda', [chunkOf('fine-1')], { time: '2026-01-01T00:00:00.000Z' })
    ).snapshot;
    const s2 = (
      await backup(src.url, admin, 'web1', 'sda', [chunkOf('fine-2'), bad], {
        time: '2026-01-02T00:00:00.000Z',
      })
    ).snapshot;
    const s3 = (
      await backup(src.url, admin, 'web1', 'sda', [chunkOf('fine-3')], { time: '2026-01-03T00:00:00.000Z' })
    ).snapshot;
    await corruptStoredChunk(src.dataDir, bad.id);
    const reader = await src.makeToken('reader');
    const env = { DISKVAULT_SERVER: dst.url, DISKVAULT_TOKEN: dst.adminToken };
    const r = await runCli(['sync', '--from', src.url, '--from-token', reader, '--json'], env);
    t.is(r.code, 1);
    const s = summaryOf(r.stdout);
    t.is(s.snapshotsCopied, 2);
    t.is(s.snapshotsFailed, 1);
    t.is(s.failures[0].snapshot, s2.id);
    t.regex(s.failures[0].code, /^(Corrupt|HashMismatch)$/);
    t.deepEqual(
      dst.repo.listSnapshots().map((x) => x.id),
      [s1.id, s3.id],
    );
    t.is((await call(dst.url, dst.adminToken, 'GET', `/v1/chunks/${bad.id}`)).status, 404);

    const human = await runCli(['sync', '--from', src.url, '--from-token', reader], env);
    t.is(human.code, 1);
    t.regex(human.stdout, new RegExp(`^FAILED  ${s2.id.slice(0, 12)}  web1 sda`, 'm'));
    t.regex(human.stdout, /0 snapshots copied, 2 already present, 1 FAILED/);
  } finally {
    await src.stop();
    await dst.stop();
  }
});

test('a chunk only the sync finds wrong is reported to the source, whose next backup of it heals the copy', async (t) => {
  // No chunk cache on the source: the sync must be served what is on its disk.
  const src = await startTestServer({ storage: 'local', cacheBytes: 0 });
  const dst = await startTestServer({ storage: 'local' });
  try {
    const admin = src.adminToken;
    const bad = chunkOf('resealed');
    const snap = (await backup(src.url, admin, 'web1', 'sda', [chunkOf('sound'), bad])).snapshot;
    // Well formed in every way the source checks before serving it, but other bytes: only a full check
    // against the id, which the sync makes, can tell.
    await corruptStoredChunk(src.dataDir, bad.id, { resealed: true });
    const reader = await src.makeToken('reader');
    const env = { DISKVAULT_SERVER: dst.url, DISKVAULT_TOKEN: dst.adminToken };
    const r = await runCli(['sync', '--from', src.url, '--from-token', reader, '--json'], env);
    t.is(r.code, 1, r.stderr);
    const failure = summaryOf(r.stdout).failures[0];
    t.is(failure.snapshot, snap.id);
    t.is(failure.code, 'HashMismatch');
    t.regex(failure.message, new RegExp(`chunk ${bad.id} .*; the server has marked its copy damaged`));
    t.deepEqual(await missingFor(src.url, admin, 'web1', [bad.id]), [bad.id], 'the source asks for it again');

    t.is((await backup(src.url, admin, 'web1', 'sda', [bad])).uploaded, 1);
    const again = await runCli(['sync', '--from', src.url, '--from-token', reader, '--json'], env);
    t.is(again.code, 0, again.stderr);
    t.like(summaryOf(again.stdout), { snapshotsFailed: 0 });
    t.true(
      dst.repo.listSnapshots().some((x) => x.id === snap.id),
      'the snapshot is copied once the chunk is healed',
    );
  } finally {
    await src.stop();
    await dst.stop();
  }
});

test('sync needs an admin token on the destination and a reader (or admin) token on the source', async (t) => {
  const src = await startTestServer({ storage: 'local' });
  const dst = await startTestServer({ storage: 'local' });
  try {
    const reader = await src.makeToken('reader');
    const dstAgent = await dst.makeToken('agent', ['web1']);
    const asAgent = await runCli(['sync', '--from', src.url, '--from-token', reader], {
      DISKVAULT_SERVER: dst.url,
      DISKVAULT_TOKEN: dstAgent,
    });
    t.is(asAgent.code, 1);
    t.regex(asAgent.stderr, /the destination token must be an admin token/);
    const srcAgent = await src.makeToken('agent', ['web1']);
    const fromAgent = await runCli(['sync', '--from', src.url, '--from-token', srcAgent], {
      DISKVAULT_SERVER: dst.url,
      DISKVAULT_TOKEN: dst.adminToken,
    });
    t.is(fromAgent.code, 1);
    t.regex(fromAgent.stderr, /give a reader token of the source/);
    const noFrom = await runCli(['sync'], { DISKVAULT_SERVER: dst.url, DISKVAULT_TOKEN: dst.adminToken });
    t.is(noFrom.code, 2);
    t.regex(noFrom.stderr, /--from URL \(the source server\) is required/);
    const noToken = await runCli(['sync', '--from', src.url], {
      DISKVAULT_SERVER: dst.url,
      DISKVAULT_TOKEN: dst.adminToken,
    });
    t.is(noToken.code, 2);
    const revoked = await runCli(
      ['sync', '--from', src.url, '--from-token', `dv_${'0'.repeat(16)}_${'0'.repeat(64)}`],
      {
        DISKVAULT_SERVER: dst.url,
        DISKVAULT_TOKEN: dst.adminToken,
      },
    );
    t.is(revoked.code, 1);
    t.notRegex(revoked.stderr, /\n\s+at /);
  } finally {
    await src.stop();
    await dst.stop();
  }
});

const snap = (id: string, tenant: string, time: string): SnapshotInfo => ({
  id,
  host: 'h',
  disk: 'd',
  time,
  receivedAt: time,
  size: 1,
  sha256: '',
  chunkCount: 1,
  tags: [],
  unreadable: [],
  sourceFormat: 'raw',
  tenant,
});

test('planSync: oldest first; vanished only within what the source token covers', (t) => {
  const src = [snap('c', 'a', '2026-01-03T00:00:00Z'), snap('a', 'a', '2026-01-01T00:00:00Z')];
  const dst = [
    snap('a', 'a', '2026-01-01T00:00:00Z'),
    snap('x', 'a', '2026-01-02T00:00:00Z'),
    snap('y', 'b', '2026-01-02T00:00:00Z'),
  ];
  const all = planSync(src, dst, { sourceTenant: 'all', destinationTenant: 'all' });
  t.deepEqual(
    all.copy.map((s) => s.id),
    ['c'],
  );
  t.deepEqual(
    all.present.map((s) => s.id),
    ['a'],
  );
  t.deepEqual(
    all.vanished.map((s) => s.id),
    ['x', 'y'],
  );
  // A one-tenant source into a global destination: other tenants' snapshots are none of this sync's business.
  t.deepEqual(
    planSync(src, dst, { sourceTenant: 'a', destinationTenant: 'all' }).vanished.map((s) => s.id),
    ['x'],
  );
  const twoNew = planSync(
    [snap('n2', 'a', '2026-02-02T00:00:00Z'), snap('n1', 'a', '2026-02-01T00:00:00Z')],
    [],
    {
      sourceTenant: 'all',
      destinationTenant: 'all',
    },
  );
  t.deepEqual(
    twoNew.copy.map((s) => s.id),
    ['n1', 'n2'],
  );
});
