import test from 'ava';
import { backup, call, chunkOf, commit, manifestFor, openSession, putChunk } from '../helpers/api-client.js';
import { startTestServer, type TestServer } from '../helpers/server.js';

/**
 * A tenant must not learn what another tenant holds from any answer: not from an upload's status or body,
 * not from its tenant admin's statistics. Each test compares an answer about a chunk another tenant holds
 * with the answer about one nobody holds (or the same figure before and after).
 */
let srv: TestServer;

test.before(async () => {
  srv = await startTestServer();
});

test.after.always(async () => {
  await srv?.stop();
});

test('an upload answers the same for a chunk another tenant holds as for a new one', async (t) => {
  const agentA = await srv.makeToken('agent', ['oa-web1'], 'oracle-a');
  const agentB = await srv.makeToken('agent', ['ob-web1'], 'oracle-b');
  const held = chunkOf('oracle-held-by-a');
  const fresh = chunkOf('oracle-held-by-nobody');
  await backup(srv.url, agentA, 'oa-web1', 'sda', [held]);

  const session = await openSession(srv.url, agentB, 'ob-web1');
  const other = await putChunk(srv.url, agentB, session, held, true);
  const none = await putChunk(srv.url, agentB, session, fresh, true);
  t.deepEqual([other.status, other.json], [201, { id: held.id, stored: true }]);
  t.deepEqual([none.status, none.json], [201, { id: fresh.id, stored: true }]);
  // Now B holds both: the answer depends on B's own earlier upload, the same for both again.
  for (const c of [held, fresh]) {
    const again = await putChunk(srv.url, agentB, session, c, false);
    t.deepEqual([again.status, again.json], [200, { id: c.id, stored: false }]);
  }
  t.is((await commit(srv.url, agentB, session, manifestFor('ob-web1', 'sda', [held, fresh]))).status, 201);
});

test("a tenant admin's statistics do not change when another tenant stores one of its chunks", async (t) => {
  const agentA = await srv.makeToken('agent', ['sa-web1'], 'stats-a');
  const adminA = await srv.makeToken('admin', [], 'stats-a');
  const agentB = await srv.makeToken('agent', ['sb-web1'], 'stats-b');
  const shared = chunkOf('stats-shared', 30_000);
  const own = chunkOf('stats-own', 20_000);
  await backup(srv.url, agentA, 'sa-web1', 'sda', [shared, own]);

  const before = await call(srv.url, adminA, 'GET', '/v1/stats');
  t.is(before.status, 200);
  t.is(before.json.scope, 'tenant');
  t.deepEqual(before.json.tenant, {
    tenant: 'stats-a',
    snapshots: 1,
    logicalBytes: 50_000,
    chunks: 2,
    rawBytes: 50_000,
  });

  // B uploads and commits A's chunk: shared in storage from now on.
  await backup(srv.url, agentB, 'sb-web1', 'sda', [shared]);
  const after = await call(srv.url, adminA, 'GET', '/v1/stats');
  t.deepEqual(after.json.tenant, before.json.tenant);
  t.deepEqual(after.json, before.json);
});

test("an id deleted and committed again by another tenant serves that tenant's image, never the old one's", async (t) => {
  const adminA = await srv.makeToken('admin', [], 'acme');
  const agentA = await srv.makeToken('agent', ['web1'], 'acme');
  const adminB = await srv.makeToken('admin', [], 'evil');
  const secret = [chunkOf('acme secret 1'), chunkOf('acme secret 2')];
  const a = await backup(srv.url, agentA, 'web1', 'sda', secret);
  const id: string = a.snapshot.id;
  // acme downloads its image (the server keeps the snapshot's chunk list), then deletes the snapshot.
  const first = await call(srv.url, agentA, 'GET', `/v1/snapshots/${id}/image`);
  t.true(first.bytes.equals(Buffer.concat(secret.map((c) => c.data))));
  t.is((await call(srv.url, adminA, 'DELETE', `/v1/snapshots/${id}`)).status, 204);
  // evil commits an image of its own under that id.
  const mine = [chunkOf('evil own', 80_000)];
  const session = await openSession(srv.url, adminB, 'h', 'd');
  for (const c of mine) await putChunk(srv.url, adminB, session, c, true);
  const committed = await call(srv.url, adminB, 'POST', `/v1/sessions/${session}/commit?id=${id}`, {
    body: manifestFor('h', 'd', mine),
    headers: { 'content-type': 'application/x-diskvault-manifest' },
  });
  t.is(committed.status, 201, JSON.stringify(committed.json));
  const image = await call(srv.url, adminB, 'GET', `/v1/snapshots/${id}/image`);
  t.is(image.status, 200);
  t.true(image.bytes.equals(mine[0]!.data), "evil's own image");
  t.not(image.headers.get('etag'), first.headers.get('etag'), 'a resumed download cannot join the two');
});
