import { mkdtemp, rm, utimes } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { encodeManifest } from '../../repo-engine/manifest-codec.js';
import { snapshotKey } from '../../repo-engine/manifest-store.js';
import type { Repository } from '../../repo-engine/repository.js';
import { backup, call, chunkOf, commit, manifestFor, openSession } from '../helpers/api-client.js';
import { startTestServer, TEST_CHUNKER } from '../helpers/server.js';

// Who decides a snapshot's time: the agent's claim is checked against the server's clock at commit, the
// server's receipt is stored in the manifest, and retention and "newest" never see a time later than it.

const DAY = 86_400_000;
const MIN = 60_000;
const iso = (ms: number) => new Date(ms).toISOString();
const NIGHTLY = { daily: 7, weekly: 5, monthly: 12, yearly: 3 };

test('an agent token cannot date snapshots in the future or back, so fakes cannot make retention delete real snapshots', async (t) => {
  // Three real nightly backups at 02:00 on three days before "today", by the server's own clock.
  const today = Math.floor(Date.now() / DAY) * DAY + 2 * 3_600_000;
  let clock = today - 3 * DAY;
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'dv-time-'));
  const srv = await startTestServer({ storage: 'local', dataDir, now: () => clock });
  let again: Awaited<ReturnType<typeof startTestServer>> | undefined;
  try {
    const agent = await srv.makeToken('agent', ['web1']);
    const real: string[] = [];
    for (let night = 0; night < 3; night++) {
      clock = today - (3 - night) * DAY;
      const { snapshot } = await backup(srv.url, agent, 'web1', 'sda', [chunkOf(`night ${night}`)], {
        time: iso(clock),
      });
      t.is(snapshot.time, iso(clock));
      t.is(snapshot.receivedAt, iso(clock));
      real.push(snapshot.id);
    }
    clock = today;
    const known = [chunkOf('night 0')];
    // Each refused commit leaves its session open (a real agent could retry it): abort it, as an agent that
    // gives up does, or the token's session limit would refuse the later attempts instead.
    const attempt = async (time: string) => {
      const sid = await openSession(srv.url, agent, 'web1', 'sda');
      const answer = await commit(srv.url, agent, sid, manifestFor('web1', 'sda', known, { time }));
      t.is((await call(srv.url, agent, 'DELETE', `/v1/sessions/${sid}`)).status, 204);
      return answer;
    };

    // 22 snapshots dated 2097-2099: each refused, nothing stored.
    for (let i = 0; i < 22; i++) {
      const r = await attempt(`${2097 + (i % 3)}-0${1 + (i % 9)}-15T03:00:00.000Z`);
      t.is(r.status, 400);
      t.is(r.json.code, 'InvalidInput');
      t.regex(r.json.message, /ahead of the server's clock .*allowed skew 5 min/);
    }
    // Backdated into the buckets of the real nights (the newest of a day is the one a policy keeps): 403.
    for (let night = 0; night < 3; night++) {
      const r = await attempt(iso(today - (3 - night) * DAY + 21 * 3_600_000));
      t.is(r.status, 403);
      t.is(r.json.code, 'Forbidden');
      t.regex(r.json.message, /before this backup began .*needs an admin token/);
    }
    t.deepEqual(
      (await call(srv.url, srv.adminToken, 'GET', '/v1/snapshots')).json.snapshots.map(
        (s: { id: string }) => s.id,
      ),
      real,
    );

    // What a compromised agent can still do: commit at the real time. 22 of those, a minute apart.
    const fakes: string[] = [];
    for (let i = 0; i < 22; i++) {
      clock = today + i * MIN;
      fakes.push((await backup(srv.url, agent, 'web1', 'sda', known, { time: iso(clock) })).snapshot.id);
    }
    for (const policy of [NIGHTLY, { within: '30d' }]) {
      const r = await call(srv.url, srv.adminToken, 'POST', '/v1/forget', {
        json: { policy, dryRun: true },
      });
      t.is(r.status, 200);
      const [group] = r.json.plan.groups;
      const kept = group.keep.map((k: { snapshot: { id: string } }) => k.snapshot.id);
      for (const id of real) t.true(kept.includes(id), `${JSON.stringify(policy)} keeps real ${id}`);
      const removed = group.remove.map((s: { id: string }) => s.id);
      t.false(
        removed.some((id: string) => real.includes(id)),
        `${JSON.stringify(policy)} removes no real snapshot`,
      );
    }

    // A clock a little ahead is tolerated, and the time is clamped to the receipt.
    clock = today + 30 * MIN;
    const ahead = await backup(srv.url, agent, 'web1', 'sdb', known, { time: iso(clock + 2 * MIN) });
    t.is(ahead.snapshot.time, iso(clock));
    t.is(ahead.snapshot.receivedAt, iso(clock));
    // An admin import may carry an old time; it is kept as given.
    const imported = await backup(srv.url, srv.adminToken, 'web1', 'sdc', known, {
      time: '2020-05-01T00:00:00.000Z',
    });
    t.is(imported.snapshot.time, '2020-05-01T00:00:00.000Z');
    t.is(imported.snapshot.receivedAt, iso(clock));
    // ...but not a future one either.
    const sid = await openSession(srv.url, srv.adminToken, 'web1', 'sdc');
    const future = await commit(
      srv.url,
      srv.adminToken,
      sid,
      manifestFor('web1', 'sdc', known, { time: '2097-01-01T00:00:00.000Z' }),
    );
    t.is(future.status, 400);

    // Newest (stats, /metrics) is the last real commit, not a claimed date.
    const stats = (await call(srv.url, srv.adminToken, 'GET', '/v1/stats')).json;
    const sda = stats.disks.find((d: { disk: string }) => d.disk === 'sda');
    t.is(sda.newest.id, fakes[21]);
    t.is(sda.newest.time, iso(today + 21 * MIN));
    const metrics = (await call(srv.url, srv.adminToken, 'GET', '/metrics')).bytes.toString();
    t.regex(
      metrics,
      new RegExp(
        `^diskvault_disk_last_snapshot_timestamp_seconds\\{tenant="default",host="web1",disk="sda"\\} ${(today + 21 * MIN) / 1000}$`,
        'm',
      ),
    );

    // The receipt lives in storage: an index rebuilt from storage alone has the same times.
    const before = (await call(srv.url, srv.adminToken, 'GET', '/v1/snapshots')).json.snapshots;
    await srv.stop();
    for (const suffix of ['', '-wal', '-shm'])
      await rm(path.join(dataDir, `index.sqlite${suffix}`), { force: true });
    again = await startTestServer({ storage: 'local', dataDir, now: () => clock });
    t.deepEqual((await call(again.url, again.adminToken, 'GET', '/v1/snapshots')).json.snapshots, before);
  } finally {
    await (again ?? srv).stop();
    await rm(dataDir, { recursive: true, force: true });
  }
});

test('a future-dated manifest already in storage (left by an older server) counts at the time it was stored', async (t) => {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'dv-time-'));
  const srv = await startTestServer({ storage: 'local', dataDir });
  let again: Awaited<ReturnType<typeof startTestServer>> | undefined;
  try {
    const agent = await srv.makeToken('agent', ['web1']);
    const chunk = chunkOf('legacy');
    const real = (await backup(srv.url, agent, 'web1', 'sda', [chunk])).snapshot;
    // An old server stored manifests without a receipt time, and took the agent's time as is.
    const id = 'ab'.repeat(32);
    const legacy = encodeManifest(
      {
        formatVersion: 1,
        id,
        tenant: 'default',
        host: 'web1',
        disk: 'sda',
        time: '2099-12-31T23:00:00.000Z',
        size: chunk.data.length,
        sha256: chunk.id,
        chunker: TEST_CHUNKER,
        tags: [],
        unreadable: [],
        sourceFormat: 'raw',
        chunkCount: 1,
      },
      [{ id: chunk.id, length: chunk.data.length }],
    );
    const key = snapshotKey(id);
    await srv.storage.put(key, (srv.repo as Repository).storedObjects.sealManifest(key, legacy));
    const storedAt = Math.floor(Date.parse(real.receivedAt) / 1000) * 1000 + 60_000;
    await utimes(path.join(srv.dataDir, 'storage', 'snapshots', id), storedAt / 1000, storedAt / 1000);
    await srv.stop();
    // At start the unknown manifest is adopted by a rebuild from storage.
    again = await startTestServer({ storage: 'local', dataDir });
    const adopted = (await call(again.url, again.adminToken, 'GET', `/v1/snapshots/${id}`)).json.snapshot;
    t.is(adopted.time, iso(storedAt));
    t.is(adopted.receivedAt, iso(storedAt));
    const stats = (await call(again.url, again.adminToken, 'GET', '/v1/stats')).json;
    t.is(stats.disks[0].newest.time, iso(storedAt));
  } finally {
    await (again ?? srv).stop();
    await rm(dataDir, { recursive: true, force: true });
  }
});
