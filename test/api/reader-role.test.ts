import test from 'ava';
import { MANIFEST_CONTENT_TYPE } from '../../api/protocol.js';
import { backup, call, chunkOf, manifestFor, openSession, putChunk } from '../helpers/api-client.js';
import { runCli } from '../helpers/backup-e2e.js';
import { startTestServer, type TestServer } from '../helpers/server.js';

// The reader role against a real server: it reads every snapshot, manifest and chunk of its scope, and every
// route that changes anything refuses it with 403 {code, message}. Admin commits that keep a given id.

for (const storage of ['local', 's3'] as const) {
  test(`[${storage}] a reader reads everything of its scope and is refused every write`, async (t) => {
    const srv = await startTestServer({ storage, gcGraceMs: 0 });
    try {
      const agentA = await srv.makeToken('agent', ['web1']);
      const agentT = await srv.makeToken('agent', ['tx-web'], 'tenant-x');
      const c1 = chunkOf('reader-1');
      const c2 = chunkOf('reader-2');
      const cx = chunkOf('reader-tenant-x');
      const s1 = (await backup(srv.url, agentA, 'web1', 'sda', [c1, c2])).snapshot;
      const sx = (await backup(srv.url, agentT, 'tx-web', 'sda', [cx])).snapshot;

      const global = await srv.makeToken('reader');
      const scoped = await srv.makeToken('reader', [], 'tenant-x');

      // Reads: the global reader sees both tenants, the scoped one only its own.
      const listAll = await call(srv.url, global, 'GET', '/v1/snapshots');
      t.is(listAll.status, 200);
      t.deepEqual(listAll.json.snapshots.map((s: { id: string }) => s.id).sort(), [s1.id, sx.id].sort());
      const listX = await call(srv.url, scoped, 'GET', '/v1/snapshots');
      t.deepEqual(
        listX.json.snapshots.map((s: { id: string }) => s.id),
        [sx.id],
      );
      t.is((await call(srv.url, global, 'GET', `/v1/snapshots/${s1.id}`)).status, 200);
      t.is((await call(srv.url, scoped, 'GET', `/v1/snapshots/${s1.id}`)).status, 404);
      const manifest = await call(srv.url, global, 'GET', `/v1/snapshots/${s1.id}/manifest`);
      t.is(manifest.status, 200);
      t.is(manifest.headers.get('content-type'), MANIFEST_CONTENT_TYPE);
      const chunk = await call(srv.url, global, 'GET', `/v1/chunks/${c2.id}`);
      t.is(chunk.status, 200);
      t.deepEqual(chunk.bytes, c2.data);
      t.is((await call(srv.url, scoped, 'GET', `/v1/chunks/${cx.id}`)).status, 200);
      t.is((await call(srv.url, scoped, 'GET', `/v1/chunks/${c1.id}`)).status, 404);
      const stats = await call(srv.url, global, 'GET', '/v1/stats');
      t.is(stats.status, 200);
      t.is(stats.json.scope, 'repository');
      t.is(stats.json.snapshots, 2);
      const statsX = await call(srv.url, scoped, 'GET', '/v1/stats');
      t.is(statsX.json.scope, 'tenant');
      t.is(statsX.json.snapshots, 1);

      // Writes: every one refused with 403 and the one error shape, for both readers.
      const admin = srv.adminToken;
      const session = await openSession(srv.url, admin, 'web1');
      const newChunk = chunkOf('reader-never-stored');
      for (const reader of [global, scoped]) {
        const attempts: [string, string, Parameters<typeof call>[4]][] = [
          ['POST', '/v1/sessions', { json: { host: 'web1', disk: 'sda' } }],
          ['POST', `/v1/sessions/${session}/missing`, { json: { ids: [newChunk.id] } }],
          [
            'POST',
            `/v1/sessions/${session}/commit`,
            {
              body: manifestFor('web1', 'sda', [c1]),
              headers: { 'content-type': MANIFEST_CONTENT_TYPE },
            },
          ],
          ['DELETE', `/v1/sessions/${session}`, {}],
          ['DELETE', `/v1/snapshots/${s1.id}`, {}],
          ['POST', '/v1/forget', { json: { policy: { last: 1 } } }],
          ['POST', '/v1/forget', { json: { policy: { last: 1 }, dryRun: true } }],
          ['POST', '/v1/gc', { json: {} }],
          ['POST', '/v1/verify', { json: { readData: true } }],
          ['PUT', `/v1/snapshots/${s1.id}/protection`, {}],
          ['DELETE', `/v1/snapshots/${s1.id}/protection`, {}],
        ];
        for (const [method, path, opts] of attempts) {
          const r = await call(srv.url, reader, method, path, opts);
          t.is(r.status, 403, `${method} ${path}: ${r.bytes.toString()}`);
          t.is(r.json?.code, 'Forbidden', `${method} ${path}`);
          t.is(typeof r.json?.message, 'string');
        }
        const put = await putChunk(srv.url, reader, session, newChunk);
        t.is(put.status, 403);
        t.is(put.json.code, 'Forbidden');
      }
      // Nothing changed: both snapshots stand, the chunk the readers tried to upload is absent.
      t.is(srv.repo.listSnapshots().length, 2);
      t.is((await call(srv.url, admin, 'GET', `/v1/chunks/${newChunk.id}`)).status, 404);
      t.truthy(srv.repo.getSnapshot(s1.id));
    } finally {
      await srv.stop();
    }
  });
}

test('token create --role reader makes a global reader, or one scoped to --tenant; no hosts', async (t) => {
  const srv = await startTestServer({ storage: 'local' });
  try {
    const global = await runCli(['token', 'create', '--role', 'reader', '--data', srv.dataDir, '--json'], {});
    t.is(global.code, 0, global.stderr);
    const g = JSON.parse(global.stdout);
    t.is(g.role, 'reader');
    t.is(g.tenant, '*');
    t.deepEqual(g.hosts, []);
    const scoped = await runCli(
      ['token', 'create', '--role', 'reader', '--tenant', 'acme', '--data', srv.dataDir, '--json'],
      {},
    );
    t.is(scoped.code, 0, scoped.stderr);
    t.is(JSON.parse(scoped.stdout).tenant, 'acme');
    const withHost = await runCli(
      ['token', 'create', '--role', 'reader', '--host', 'web1', '--data', srv.dataDir],
      {},
    );
    t.is(withHost.code, 1);
    t.regex(withHost.stderr, /a reader token is not scoped to hosts/);
    const badRole = await runCli(['token', 'create', '--role', 'viewer', '--data', srv.dataDir], {});
    t.is(badRole.code, 2);
    t.regex(badRole.stderr, /--role must be agent, admin, reader/);
    // The new token works at once against the running server.
    const list = await call(srv.url, g.token, 'GET', '/v1/snapshots');
    t.is(list.status, 200);
    const listed = await runCli(['token', 'list', '--data', srv.dataDir], {});
    t.regex(listed.stdout, new RegExp(`${g.id}  reader`));
  } finally {
    await srv.stop();
  }
});

async function commitWithId(srv: TestServer, token: string, id: string, host = 'web1') {
  const c = chunkOf(`kept-id-${host}`);
  const session = await openSession(srv.url, srv.adminToken, host);
  await putChunk(srv.url, srv.adminToken, session, c);
  return call(srv.url, token, 'POST', `/v1/sessions/${session}/commit?id=${id}`, {
    body: manifestFor(host, 'sda', [c], { time: '2020-05-04T03:02:01.000Z', tags: ['copied'] }),
    headers: { 'content-type': MANIFEST_CONTENT_TYPE },
  });
}

test('an admin commits with a given id and time; an agent may not; a taken id is a conflict', async (t) => {
  const srv = await startTestServer({ storage: 'local' });
  try {
    const id = 'ab'.repeat(32);
    const ok = await commitWithId(srv, srv.adminToken, id);
    t.is(ok.status, 201, ok.bytes.toString());
    t.is(ok.json.snapshot.id, id);
    t.is(ok.json.snapshot.time, '2020-05-04T03:02:01.000Z');
    t.deepEqual(ok.json.snapshot.tags, ['copied']);
    const again = await commitWithId(srv, srv.adminToken, id);
    t.is(again.status, 409);
    t.is(again.json.code, 'Conflict');
    t.regex(again.json.message, /already exists/);
    t.is(srv.repo.listSnapshots().length, 1);
    // The existing snapshot's manifest survived the refused commit.
    t.is((await call(srv.url, srv.adminToken, 'GET', `/v1/snapshots/${id}/manifest`)).status, 200);

    const agent = await srv.makeToken('agent', ['web2']);
    const session = await openSession(srv.url, agent, 'web2');
    const refused = await call(
      srv.url,
      agent,
      'POST',
      `/v1/sessions/${session}/commit?id=${'cd'.repeat(32)}`,
      {
        body: manifestFor('web2', 'sda', []),
        headers: { 'content-type': MANIFEST_CONTENT_TYPE },
      },
    );
    t.is(refused.status, 403);
    const bad = await commitWithId(srv, srv.adminToken, 'xyz', 'web3');
    t.is(bad.status, 400);
  } finally {
    await srv.stop();
  }
});

test('a global admin opens a session in a named tenant; other tokens may not name another tenant', async (t) => {
  const srv = await startTestServer({ storage: 'local' });
  try {
    const opened = await call(srv.url, srv.adminToken, 'POST', '/v1/sessions', {
      json: { host: 'web1', disk: 'sda', tenant: 'acme' },
    });
    t.is(opened.status, 201);
    const c = chunkOf('tenant-session');
    await putChunk(srv.url, srv.adminToken, opened.json.id, c);
    const done = await call(srv.url, srv.adminToken, 'POST', `/v1/sessions/${opened.json.id}/commit`, {
      body: manifestFor('web1', 'sda', [c], { chunker: opened.json.chunker }),
      headers: { 'content-type': MANIFEST_CONTENT_TYPE },
    });
    t.is(done.status, 201, done.bytes.toString());
    t.is(done.json.snapshot.tenant, 'acme');
    const tenantAdmin = await srv.makeToken('admin', [], 'other');
    const refused = await call(srv.url, tenantAdmin, 'POST', '/v1/sessions', {
      json: { host: 'web1', disk: 'sda', tenant: 'acme' },
    });
    t.is(refused.status, 403);
    const agent = await srv.makeToken('agent', ['web1']);
    const own = await call(srv.url, agent, 'POST', '/v1/sessions', {
      json: { host: 'web1', disk: 'sda', tenant: 'default' },
    });
    t.is(own.status, 201);
  } finally {
    await srv.stop();
  }
});
