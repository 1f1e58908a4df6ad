import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { backup, call, chunkOf, commit, manifestFor, putChunk, runJob } from '../helpers/api-client.js';
import { startTestServer } from '../helpers/server.js';

/**
 * What holds gc back, through the real server over HTTP: an upload session keeps only the chunks it was
 * told are present or uploaded, never another tenant's garbage; sessions end at a maximum age and are
 * limited per token; a snapshot lease holds one snapshot through a forget and a server restart, and needs
 * only the right to read it. gc's report names each holder.
 */

interface Holder {
  kind: string;
  host: string;
  disk: string;
  snapshot?: string;
  chunks: number;
}
const holders = (report: { holders: Holder[] }) =>
  report.holders.map((h) => [h.kind, `${h.host}/${h.disk}`, h.snapshot ?? null, h.chunks]);

test('a session keeps the chunks it was told are present or uploaded, and nothing of another tenant', async (t) => {
  const srv = await startTestServer({ gcGraceMs: 0 });
  t.teardown(() => srv.stop());
  const agentA = await srv.makeToken('agent', ['a1'], 'tenant-a');
  const agentB = await srv.makeToken('agent', ['b1'], 'tenant-b');
  const x = chunkOf('tenant a, named by the session');
  const y = chunkOf('tenant b, garbage');
  const z = chunkOf('tenant a, uploaded by the session');
  const idle = chunkOf('tenant a, garbage no session touched');
  const sa = (await backup(srv.url, agentA, 'a1', 'sda', [x, idle])).snapshot;
  const sb = (await backup(srv.url, agentB, 'b1', 'sda', [y])).snapshot;

  // Tenant A's backup of another disk (no base snapshot) is told x is present, and uploads z.
  const opened = await call(srv.url, agentA, 'POST', '/v1/sessions', { json: { host: 'a1', disk: 'sdb' } });
  t.is(opened.status, 201);
  const session: string = opened.json.id;
  const asked = await call(srv.url, agentA, 'POST', `/v1/sessions/${session}/missing`, {
    json: { ids: [x.id, z.id] },
  });
  t.deepEqual(asked.json.missing, [z.id]);
  t.is((await putChunk(srv.url, agentA, session, z)).status, 201);
  // An unrelated open session of tenant B that touched nothing.
  t.is(
    (await call(srv.url, agentB, 'POST', '/v1/sessions', { json: { host: 'b1', disk: 'sdc' } })).status,
    201,
  );

  for (const id of [sa.id, sb.id])
    t.is((await call(srv.url, srv.adminToken, 'DELETE', `/v1/snapshots/${id}`)).status, 204);
  const gc = await runJob(srv.url, srv.adminToken, '/v1/gc');
  t.is(gc.state, 'done', JSON.stringify(gc));
  // y (tenant B) and idle (tenant A, untouched) go despite the open sessions; x and z stay for the session.
  t.is(gc.result.chunksDeleted, 2, JSON.stringify(gc.result));
  t.is(gc.result.chunksHeld, 2);
  t.is(gc.result.openSessions, 2);
  t.deepEqual(holders(gc.result), [['session', 'a1/sdb', null, 2]]);
  t.is((await call(srv.url, srv.adminToken, 'GET', `/v1/chunks/${y.id}`)).status, 404);
  t.is((await call(srv.url, srv.adminToken, 'GET', `/v1/chunks/${idle.id}`)).status, 404);

  // The commit naming x and z succeeds, and reads back.
  const done = await commit(srv.url, agentA, session, manifestFor('a1', 'sdb', [x, z]));
  t.is(done.status, 201, done.bytes.toString());
  const got = await call(srv.url, agentA, 'GET', `/v1/chunks/${x.id}`);
  t.is(got.status, 200);
  t.true(got.bytes.equals(x.data));
  const after = await runJob(srv.url, srv.adminToken, '/v1/gc');
  t.is(after.result.chunksDeleted, 0);
  t.deepEqual(after.result.holders, []);
});

test('a session ends at its maximum age however busy, and one token may hold only so many', async (t) => {
  const srv = await startTestServer({
    sessionLeaseMs: 60_000,
    sessionMaxAgeMs: 1500,
    maxSessionsPerToken: 3,
  });
  t.teardown(() => srv.stop());
  const agent = await srv.makeToken('agent', ['m1']);
  const began = Date.now();
  const opened = await call(srv.url, agent, 'POST', '/v1/sessions', { json: { host: 'm1', disk: 'sda' } });
  t.is(opened.status, 201);
  t.true(Date.parse(opened.json.expiresAt) <= began + 1500 + 1000, opened.json.expiresAt);
  // Used every 100 ms, it still ends once 1.5 s have passed since it began.
  let status = 200;
  while (status === 200 && Date.now() - began < 10_000) {
    status = (
      await call(srv.url, agent, 'POST', `/v1/sessions/${opened.json.id}/missing`, { json: { ids: [] } })
    ).status;
    if (status === 200) await new Promise((r) => setTimeout(r, 100));
  }
  t.is(status, 404);
  const lived = Date.now() - began;
  t.true(lived >= 1400 && lived < 5000, `lived ${lived} ms`);

  // Three open sessions per token here: the fourth is refused with 429 and Retry-After, another token is not.
  const ids: string[] = [];
  for (let i = 0; i < 3; i++) {
    const r = await call(srv.url, agent, 'POST', '/v1/sessions', { json: { host: 'm1', disk: `d${i}` } });
    t.is(r.status, 201);
    ids.push(r.json.id);
  }
  const refused = await call(srv.url, agent, 'POST', '/v1/sessions', { json: { host: 'm1', disk: 'd3' } });
  t.is(refused.status, 429);
  t.is(refused.json.code, 'TooManyRequests');
  t.regex(refused.json.message, /already has 3 open upload sessions/);
  const retryAfter = Number(refused.headers.get('retry-after'));
  t.true(Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 2, String(retryAfter));
  const admin = await call(srv.url, srv.adminToken, 'POST', '/v1/sessions', {
    json: { host: 'm1', disk: 'x' },
  });
  t.is(admin.status, 201);
  // Aborting one makes room.
  t.is((await call(srv.url, agent, 'DELETE', `/v1/sessions/${ids[0]}`)).status, 204);
  t.is(
    (await call(srv.url, agent, 'POST', '/v1/sessions', { json: { host: 'm1', disk: 'd3' } })).status,
    201,
  );
});

test('the default limit refuses a token its 17th open session', async (t) => {
  const srv = await startTestServer();
  t.teardown(() => srv.stop());
  const agent = await srv.makeToken('agent', ['n1']);
  const answers = await Promise.all(
    Array.from({ length: 17 }, (_, i) =>
      call(srv.url, agent, 'POST', '/v1/sessions', { json: { host: 'n1', disk: `d${i}` } }),
    ),
  );
  t.deepEqual(answers.map((a) => a.status).sort(), [...Array.from({ length: 16 }, () => 201), 429].sort());
});

test('a snapshot lease needs read rights, holds its snapshot through a forget and a restart, and ends when released', async (t) => {
  const dataDir = await mkdtemp(join(tmpdir(), 'dv-lease-'));
  let srv = await startTestServer({ gcGraceMs: 0, maxSessionsPerToken: 2, dataDir });
  t.teardown(async () => {
    await srv.stop();
    await rm(dataDir, { recursive: true, force: true });
  });
  const agent = await srv.makeToken('agent', ['l1']);
  const otherHost = await srv.makeToken('agent', ['l2']);
  const otherTenant = await srv.makeToken('admin', [], 'tenant-z');
  const own = [chunkOf('leased 1'), chunkOf('leased 2'), chunkOf('leased 3')];
  const snap = (await backup(srv.url, agent, 'l1', 'sda', own)).snapshot;
  const path = `/v1/snapshots/${snap.id}/lease`;

  // Only who may read the snapshot may hold it; the others see it as absent.
  for (const token of [otherHost, otherTenant]) {
    const r = await call(srv.url, token, 'POST', path, { json: {} });
    t.is(r.status, 404);
    t.is(r.json.code, 'NotFound');
  }
  const taken = await call(srv.url, agent, 'POST', path, { json: {} });
  t.is(taken.status, 201, taken.bytes.toString());
  t.regex(taken.json.leaseId, /^[0-9a-f]{64}$/);
  t.is(taken.json.snapshot, snap.id);
  const lease: string = taken.json.leaseId;
  const byAdmin = await call(srv.url, srv.adminToken, 'POST', path, { json: {} });
  t.is(byAdmin.status, 201);
  t.is((await call(srv.url, srv.adminToken, 'DELETE', `/v1/leases/${byAdmin.json.leaseId}`)).status, 204);
  // Renewing or releasing is for the token that took it.
  t.is((await call(srv.url, otherHost, 'POST', `/v1/leases/${lease}`, { json: {} })).status, 404);
  t.is((await call(srv.url, srv.adminToken, 'DELETE', `/v1/leases/${lease}`)).status, 404);
  // Per token, like sessions: two here.
  const second = await call(srv.url, agent, 'POST', path, { json: {} });
  t.is(second.status, 201);
  const third = await call(srv.url, agent, 'POST', path, { json: {} });
  t.is(third.status, 429);
  t.is(third.json.code, 'TooManyRequests');
  t.truthy(third.headers.get('retry-after'));
  t.is((await call(srv.url, agent, 'DELETE', `/v1/leases/${second.json.leaseId}`)).status, 204);

  // The server restarts: the lease is in the index and still holds.
  await srv.stop();
  srv = await startTestServer({ gcGraceMs: 0, dataDir });
  const renewed = await call(srv.url, agent, 'POST', `/v1/leases/${lease}`, { json: {} });
  t.is(renewed.status, 200, renewed.bytes.toString());
  t.true(Date.parse(renewed.json.expiresAt) > Date.parse(taken.json.expiresAt));

  t.is((await call(srv.url, srv.adminToken, 'DELETE', `/v1/snapshots/${snap.id}`)).status, 204);
  const gc = await runJob(srv.url, srv.adminToken, '/v1/gc');
  t.is(gc.result.chunksDeleted, 0, JSON.stringify(gc.result));
  t.is(gc.result.chunksHeld, 3);
  t.deepEqual(holders(gc.result), [['lease', 'l1/sda', snap.id, 3]]);
  // The forgotten snapshot's chunks still read for its tenant while held.
  t.is((await call(srv.url, agent, 'GET', `/v1/chunks/${own[0]?.id}`)).status, 200);

  t.is((await call(srv.url, agent, 'DELETE', `/v1/leases/${lease}`)).status, 204);
  t.is((await call(srv.url, agent, 'POST', `/v1/leases/${lease}`, { json: {} })).status, 404);
  const freed = await runJob(srv.url, srv.adminToken, '/v1/gc');
  t.is(freed.result.chunksDeleted, 3);
  t.deepEqual(freed.result.holders, []);
  // A lease on a snapshot that is gone cannot be taken.
  t.is((await call(srv.url, agent, 'POST', path, { json: {} })).status, 404);
});

test('a lease not renewed ends by itself and stops holding', async (t) => {
  // Long enough that a loaded machine still commits, takes the lease and runs the first gc within it.
  const srv = await startTestServer({ gcGraceMs: 0, sessionLeaseMs: 5000 });
  t.teardown(() => srv.stop());
  const agent = await srv.makeToken('agent', ['e1']);
  const snap = (await backup(srv.url, agent, 'e1', 'sda', [chunkOf('expiring')])).snapshot;
  const taken = await call(srv.url, agent, 'POST', `/v1/snapshots/${snap.id}/lease`, { json: {} });
  t.is(taken.status, 201);
  t.is((await call(srv.url, srv.adminToken, 'DELETE', `/v1/snapshots/${snap.id}`)).status, 204);
  const held = await runJob(srv.url, srv.adminToken, '/v1/gc');
  t.is(held.result.chunksHeld, 1);
  const deadline = Date.now() + 15_000;
  while (Date.parse(taken.json.expiresAt) >= Date.now() && Date.now() < deadline)
    await new Promise((r) => setTimeout(r, 100));
  const freed = await runJob(srv.url, srv.adminToken, '/v1/gc');
  t.is(freed.result.chunksDeleted, 1);
  t.is(freed.result.openLeases, 0);
  t.is((await call(srv.url, agent, 'POST', `/v1/leases/${taken.json.leaseId}`, { json: {} })).status, 404);
});
