import { request } from 'node:http';
import { Readable } from 'node:stream';
import test from 'ava';
import { decompress } from 'zstd-napi';
import { revokeToken } from '../../api/token-store.js';
import { ManifestReader } from '../../repo-engine/manifest-codec.js';
import type { Repository } from '../../repo-engine/repository.js';
import {
  backup,
  call,
  chunkOf,
  commit,
  manifestFor,
  openSession,
  putChunk,
  runJob,
  zstd,
} from './api-client.js';
import { pollUntil } from './poll.js';
import { startTestServer, TEST_CHUNKER, type TestServer } from './server.js';

/**
 * Every route, both roles, every error status, and the tenant guarantees (docs/security.md), against a real
 * server on 127.0.0.1. Run unchanged over local storage and over the fake S3 server.
 */
export function apiSuite(storage: 'local' | 's3'): void {
  let srv: TestServer;
  let admin: string;

  test.before(async () => {
    srv = await startTestServer({ storage });
    admin = srv.adminToken;
  });
  test.after.always(async () => {
    await srv?.stop();
  });

  test(`[${storage}] health answers without a token`, async (t) => {
    const r = await call(srv.url, undefined, 'GET', '/v1/health');
    t.is(r.status, 200);
    t.is(r.json.status, 'ok');
  });

  test(`[${storage}] a request without, with a malformed, or with a revoked token is refused with 401`, async (t) => {
    t.is((await call(srv.url, undefined, 'GET', '/v1/snapshots')).status, 401);
    const bad = await call(srv.url, 'dv_nonsense', 'GET', '/v1/snapshots');
    t.is(bad.status, 401);
    t.is(bad.json.code, 'Unauthorized');
    const token = await srv.makeToken('agent', ['revokee']);
    const wrongSecret = token.replace(/.$/, (c) => (c === '0' ? '1' : '0'));
    t.is((await call(srv.url, wrongSecret, 'GET', '/v1/snapshots')).status, 401);
    t.is((await call(srv.url, token, 'GET', '/v1/snapshots')).status, 200);
    // Revoked while the server runs: effective on the next request, no restart.
    await revokeToken(srv.dataDir, token.split('_')[1]);
    t.is((await call(srv.url, token, 'GET', '/v1/snapshots')).status, 401);
  });

  test(`[${storage}] an agent backs up, lists, reads the manifest and downloads chunks bit-exact`, async (t) => {
    const agent = await srv.makeToken('agent', ['rt1']);
    const chunks = [chunkOf('rt-a'), chunkOf('rt-b'), chunkOf('rt-c', 20_000)];
    const session = await openSession(srv.url, agent, 'rt1', 'sda');
    const missing = await call(srv.url, agent, 'POST', `/v1/sessions/${session}/missing`, {
      json: { ids: chunks.map((c) => c.id) },
    });
    t.is(missing.status, 200);
    t.deepEqual(new Set(missing.json.missing), new Set(chunks.map((c) => c.id)));
    const first = await putChunk(srv.url, agent, session, chunks[0], false);
    t.is(first.status, 201);
    t.deepEqual(first.json, { id: chunks[0].id, stored: true });
    t.is((await putChunk(srv.url, agent, session, chunks[1], true)).status, 201);
    t.is((await putChunk(srv.url, agent, session, chunks[2], true)).status, 201);
    const again = await putChunk(srv.url, agent, session, chunks[1], false);
    t.is(again.status, 200);
    t.false(again.json.stored);
    const after = await call(srv.url, agent, 'POST', `/v1/sessions/${session}/missing`, {
      json: { ids: chunks.map((c) => c.id) },
    });
    t.deepEqual(after.json.missing, []);
    const done = await commit(srv.url, agent, session, manifestFor('rt1', 'sda', chunks));
    t.is(done.status, 201);
    const snap = done.json.snapshot;
    t.regex(snap.id, /^[0-9a-f]{64}$/);
    t.is(snap.host, 'rt1');
    t.is(snap.chunkCount, 3);

    const list = await call(srv.url, agent, 'GET', '/v1/snapshots?host=rt1&disk=sda');
    t.deepEqual(
      list.json.snapshots.map((s: { id: string }) => s.id),
      [snap.id],
    );
    t.is((await call(srv.url, agent, 'GET', `/v1/snapshots/${snap.id}`)).json.snapshot.id, snap.id);

    const manifest = await call(srv.url, agent, 'GET', `/v1/snapshots/${snap.id}/manifest`);
    t.is(manifest.status, 200);
    t.is(manifest.headers.get('content-type'), 'application/x-diskvault-manifest');
    const reader = await ManifestReader.open(Readable.from([manifest.bytes]), 'storage');
    t.is(reader.header.id, snap.id);
    const ids: string[] = [];
    for await (const e of reader.entries()) ids.push(e.id);
    t.deepEqual(
      ids,
      chunks.map((c) => c.id),
    );

    for (const c of chunks) {
      const raw = await call(srv.url, agent, 'GET', `/v1/chunks/${c.id}`);
      t.is(raw.status, 200);
      t.true(raw.bytes.equals(c.data));
      t.is(raw.headers.get('x-diskvault-raw-length'), String(c.data.length));
      // fetch would decode zstd itself if it could; node:http shows the bytes as sent.
      const z = await rawGet(srv.url, agent, `/v1/chunks/${c.id}`, { 'accept-encoding': 'zstd' });
      t.is(z.status, 200);
      const body = z.headers['content-encoding'] === 'zstd' ? decompress(z.body) : z.body;
      t.true(body.equals(c.data));
    }
  });

  test(`[${storage}] the binary missing query answers as the JSON one, in binary, and refuses partial ids`, async (t) => {
    const agent = await srv.makeToken('agent', ['bin1']);
    const stored = chunkOf('bin-stored');
    const absent = [chunkOf('bin-absent-1'), chunkOf('bin-absent-2')];
    await backup(srv.url, agent, 'bin1', 'sda', [stored]);
    const session = await openSession(srv.url, agent, 'bin1', 'sda');
    // Asked in this order, one absent id twice: each missing id once, in the order asked.
    const asked = [absent[1], stored, absent[0], absent[1]].map((c) => Buffer.from(c.id, 'hex'));
    const ids = { 'content-type': 'application/x-diskvault-ids' };
    const r = await call(srv.url, agent, 'POST', `/v1/sessions/${session}/missing`, {
      body: Buffer.concat(asked),
      headers: ids,
    });
    t.is(r.status, 200);
    t.is(r.headers.get('content-type'), 'application/x-diskvault-ids');
    t.deepEqual(r.bytes, Buffer.concat([asked[0], asked[2]]));
    const json = await call(srv.url, agent, 'POST', `/v1/sessions/${session}/missing`, {
      json: { ids: [absent[1].id, stored.id, absent[0].id, absent[1].id] },
    });
    t.deepEqual(json.json.missing, [absent[1].id, absent[0].id]);

    const empty = await call(srv.url, agent, 'POST', `/v1/sessions/${session}/missing`, {
      body: Buffer.alloc(0),
      headers: ids,
    });
    t.is(empty.status, 200);
    t.is(empty.bytes.length, 0);
    const partial = await call(srv.url, agent, 'POST', `/v1/sessions/${session}/missing`, {
      body: Buffer.alloc(33),
      headers: ids,
    });
    t.is(partial.status, 400);
    t.is(partial.json.code, 'InvalidInput');
    const tooMany = await call(srv.url, agent, 'POST', `/v1/sessions/${session}/missing`, {
      body: Buffer.alloc(50_001 * 32),
      headers: ids,
    });
    t.is(tooMany.status, 413);
    t.is(tooMany.json.code, 'TooLarge');
  });

  test(`[${storage}] commit naming a chunk never uploaded is refused with 409 listing it`, async (t) => {
    const agent = await srv.makeToken('agent', ['cf1']);
    const have = chunkOf('cf-have');
    const lost = chunkOf('cf-lost');
    const session = await openSession(srv.url, agent, 'cf1');
    t.is((await putChunk(srv.url, agent, session, have)).status, 201);
    const r = await commit(srv.url, agent, session, manifestFor('cf1', 'sda', [have, lost]));
    t.is(r.status, 409);
    t.is(r.json.code, 'Conflict');
    t.deepEqual(r.json.details.missing, [lost.id]);
    // The session survives the conflict: upload and commit again.
    t.is((await putChunk(srv.url, agent, session, lost)).status, 201);
    t.is((await commit(srv.url, agent, session, manifestFor('cf1', 'sda', [have, lost]))).status, 201);
  });

  test(`[${storage}] a chunk under the wrong id is refused with 422 and nothing is stored`, async (t) => {
    const agent = await srv.makeToken('agent', ['hm1']);
    const real = chunkOf('hm-real');
    const claimed = chunkOf('hm-claimed');
    const session = await openSession(srv.url, agent, 'hm1');
    for (const compressed of [false, true]) {
      const r = await call(srv.url, agent, 'PUT', `/v1/chunks/${claimed.id}?session=${session}`, {
        body: compressed ? zstd(real.data) : real.data,
        headers: compressed ? { 'content-encoding': 'zstd' } : {},
      });
      t.is(r.status, 422);
      t.is(r.json.code, 'HashMismatch');
    }
    const m = await call(srv.url, agent, 'POST', `/v1/sessions/${session}/missing`, {
      json: { ids: [claimed.id, real.id] },
    });
    t.deepEqual(new Set(m.json.missing), new Set([claimed.id, real.id]));
    t.is((await call(srv.url, admin, 'GET', `/v1/chunks/${claimed.id}`)).status, 404);
  });

  test(`[${storage}] a chunk body over the limit is refused with 413, by header and by counting`, async (t) => {
    const agent = await srv.makeToken('agent', ['big1']);
    const session = await openSession(srv.url, agent, 'big1');
    const id = chunkOf('big').id;
    const tooBig = Buffer.alloc(TEST_CHUNKER.max + 1);
    const r = await call(srv.url, agent, 'PUT', `/v1/chunks/${id}?session=${session}`, { body: tooBig });
    t.is(r.status, 413);
    t.is(r.json.code, 'TooLarge');
    // Chunked transfer: no Content-Length, the cap still holds.
    const chunked = await rawPut(srv.url, agent, `/v1/chunks/${id}?session=${session}`, tooBig, {
      'transfer-encoding': 'chunked',
    });
    t.is(chunked.status, 413);
  });

  test(`[${storage}] a 5 GiB Content-Length is refused with 413 before any body byte is sent`, async (t) => {
    const agent = await srv.makeToken('agent', ['huge1']);
    const session = await openSession(srv.url, agent, 'huge1');
    const id = chunkOf('huge').id;
    const started = Date.now();
    const status = await new Promise<number>((resolve, reject) => {
      const u = new URL(`${srv.url}/v1/chunks/${id}?session=${session}`);
      const req = request({
        host: u.hostname,
        port: u.port,
        path: `${u.pathname}${u.search}`,
        method: 'PUT',
        headers: { authorization: `Bearer ${agent}`, 'content-length': String(5 * 1024 ** 3) },
      });
      req.on('response', (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
        req.destroy();
      });
      req.on('error', reject);
      req.flushHeaders(); // headers only: the body is never written
    });
    t.is(status, 413);
    t.true(Date.now() - started < 5000);
    const commitTooBig = await rawPut(
      srv.url,
      agent,
      `/v1/sessions/${session}/commit`,
      undefined,
      {
        'content-type': 'application/x-diskvault-manifest',
        'content-length': String(8 * 1024 ** 4),
      },
      'POST',
    );
    t.is(commitTooBig.status, 413);
  });

  test(`[${storage}] malformed ids, names with path traversal, bad JSON and oversized queries are refused with 400`, async (t) => {
    const agent = await srv.makeToken('agent', ['bad1']);
    const session = await openSession(srv.url, agent, 'bad1');
    const expect400 = async (r: Promise<{ status: number; json: { code: string } }>, what: string) => {
      const a = await r;
      t.is(a.status, 400, what);
      t.is(a.json.code, 'InvalidInput', what);
    };
    await expect400(
      call(srv.url, admin, 'POST', '/v1/sessions', { json: { host: '../etc', disk: 'sda' } }),
      'traversal host',
    );
    await expect400(
      call(srv.url, admin, 'POST', '/v1/sessions', { json: { host: 'web1', disk: '..' } }),
      'dot-dot disk',
    );
    await expect400(
      call(srv.url, admin, 'POST', '/v1/sessions', { json: { host: 'web1/../../x', disk: 'sda' } }),
      'slash host',
    );
    await expect400(call(srv.url, admin, 'POST', '/v1/sessions', { json: { host: 'web1' } }), 'no disk');
    await expect400(
      call(srv.url, admin, 'POST', '/v1/sessions', {
        body: Buffer.from('{nope'),
        headers: { 'content-type': 'application/json' },
      }),
      'bad JSON',
    );
    await expect400(call(srv.url, admin, 'GET', '/v1/snapshots?host=..%2Fetc'), 'traversal filter');
    await expect400(call(srv.url, admin, 'GET', '/v1/chunks/ABCDEF'), 'short id');
    await expect400(call(srv.url, admin, 'GET', `/v1/chunks/${'G'.repeat(64)}`), 'non-hex id');
    await expect400(
      call(srv.url, admin, 'GET', `/v1/snapshots/${'..%2F'.repeat(3)}`),
      'traversal snapshot id',
    );
    await expect400(
      call(srv.url, agent, 'PUT', `/v1/chunks/${chunkOf('x').id}`, { body: chunkOf('x').data }),
      'no session',
    );
    await expect400(
      call(srv.url, agent, 'PUT', `/v1/chunks/${chunkOf('x').id}?session=${session}`, {
        body: chunkOf('x').data,
        headers: { 'content-encoding': 'gzip' },
      }),
      'unknown encoding',
    );
    const tooMany = Array.from({ length: 50_001 }, (_, i) => i.toString(16).padStart(64, '0'));
    await expect400(
      call(srv.url, agent, 'POST', `/v1/sessions/${session}/missing`, { json: { ids: tooMany } }),
      'too many ids',
    );
    await expect400(
      call(srv.url, agent, 'POST', `/v1/sessions/${session}/missing`, { json: { ids: ['xyz'] } }),
      'bad id in list',
    );
    await expect400(
      call(srv.url, agent, 'POST', `/v1/sessions/${session}/commit`, {
        body: manifestFor('bad1', 'sda', []),
        headers: { 'content-type': 'application/json' },
      }),
      'commit content type',
    );
    await expect400(
      commit(srv.url, agent, session, Buffer.from('not a manifest at all')),
      'garbage manifest',
    );
    await expect400(call(srv.url, admin, 'POST', '/v1/forget', { json: { policy: {} } }), 'empty policy');
    await expect400(
      call(srv.url, admin, 'POST', '/v1/forget', { json: { policy: { within: '2x' } } }),
      'bad duration',
    );
  });

  test(`[${storage}] agents are held to their hosts: 403 for other hosts and admin routes, 404 for other hosts' snapshots`, async (t) => {
    const mine = await srv.makeToken('agent', ['own1']);
    const other = await srv.makeToken('agent', ['own2']);
    const { snapshot } = await backup(srv.url, other, 'own2', 'sda', [chunkOf('own2-a')]);
    await backup(srv.url, mine, 'own1', 'sda', [chunkOf('own1-a')]);

    const denied = await call(srv.url, mine, 'POST', '/v1/sessions', { json: { host: 'own2', disk: 'sda' } });
    t.is(denied.status, 403);
    t.is(denied.json.code, 'Forbidden');
    t.is((await call(srv.url, mine, 'GET', '/v1/snapshots?host=own2')).status, 403);
    const listed = await call(srv.url, mine, 'GET', '/v1/snapshots');
    t.is(listed.json.snapshots.length, 1);
    t.is(listed.json.snapshots[0].host, 'own1');
    t.is((await call(srv.url, mine, 'GET', `/v1/snapshots/${snapshot.id}`)).status, 404);
    t.is((await call(srv.url, mine, 'GET', `/v1/snapshots/${snapshot.id}/manifest`)).status, 404);
    t.is((await call(srv.url, mine, 'DELETE', `/v1/snapshots/${snapshot.id}`)).status, 403);
    t.is((await call(srv.url, mine, 'POST', '/v1/forget', { json: { policy: { last: 1 } } })).status, 403);
    t.is((await call(srv.url, mine, 'POST', '/v1/gc', { json: {} })).status, 403);
    t.is((await call(srv.url, mine, 'POST', '/v1/verify', { json: {} })).status, 403);
    t.is((await call(srv.url, mine, 'GET', '/metrics')).status, 403);
    // Still there for its owner.
    t.is((await call(srv.url, other, 'GET', `/v1/snapshots/${snapshot.id}`)).status, 200);
    const stats = await call(srv.url, mine, 'GET', '/v1/stats');
    t.is(stats.json.scope, 'hosts');
    t.deepEqual(
      stats.json.perHost.map((h: { host: string }) => h.host),
      ['own1'],
    );
  });

  test(`[${storage}] a session is bound to the token that opened it`, async (t) => {
    const a = await srv.makeToken('agent', ['bind1']);
    const b = await srv.makeToken('agent', ['bind1']);
    const session = await openSession(srv.url, a, 'bind1');
    const c = chunkOf('bind');
    const r = await putChunk(srv.url, b, session, c);
    t.is(r.status, 404);
    t.is(
      (await call(srv.url, b, 'POST', `/v1/sessions/${session}/missing`, { json: { ids: [c.id] } })).status,
      404,
    );
    t.is((await call(srv.url, b, 'DELETE', `/v1/sessions/${session}`)).status, 404);
    t.is((await call(srv.url, a, 'DELETE', `/v1/sessions/${session}`)).status, 204);
    t.is((await putChunk(srv.url, a, session, c)).status, 404);
    t.is((await call(srv.url, a, 'GET', `/v1/snapshots/${'0'.repeat(64)}`)).status, 404);
  });

  test(`[${storage}] unknown routes and methods answer in the error shape`, async (t) => {
    const r = await call(srv.url, admin, 'GET', '/v1/nothing-here');
    t.is(r.status, 404);
    t.is(r.json.code, 'NotFound');
    const m = await call(srv.url, admin, 'PATCH', '/v1/sessions');
    t.is(m.status, 405);
    t.is(m.json.code, 'MethodNotAllowed');
  });

  test(`[${storage}] admin forget plans with reasons, applies, prunes, and deletes single snapshots`, async (t) => {
    const agent = await srv.makeToken('agent', ['ret1']);
    const snaps = [];
    for (let i = 0; i < 3; i++)
      snaps.push(
        (await backup(srv.url, agent, 'ret1', 'sda', [chunkOf(`ret-shared`), chunkOf(`ret-${i}`)])).snapshot,
      );
    const dry = await call(srv.url, admin, 'POST', '/v1/forget', {
      json: { policy: { last: 1 }, host: 'ret1', dryRun: true },
    });
    t.is(dry.status, 200);
    t.true(dry.json.dryRun);
    const group = dry.json.plan.groups.find((g: { host: string }) => g.host === 'ret1');
    t.is(group.keep.length, 1);
    t.is(group.remove.length, 2);
    t.true(group.keep[0].reasons.length > 0);
    t.is((await call(srv.url, agent, 'GET', '/v1/snapshots?host=ret1')).json.snapshots.length, 3);
    const applied = await runJob(srv.url, admin, '/v1/forget', {
      policy: { last: 2 },
      host: 'ret1',
      prune: true,
    });
    t.is(applied.state, 'done');
    t.is(applied.kind, 'forget');
    t.is(applied.result.removed, 1);
    t.is(typeof applied.result.gc.chunksDeleted, 'number');
    const left = (await call(srv.url, agent, 'GET', '/v1/snapshots?host=ret1')).json.snapshots;
    t.is(left.length, 2);
    const del = await call(srv.url, admin, 'DELETE', `/v1/snapshots/${left[0].id}`);
    t.is(del.status, 204);
    t.is((await call(srv.url, admin, 'GET', `/v1/snapshots/${left[0].id}`)).status, 404);
    t.is((await call(srv.url, admin, 'DELETE', `/v1/snapshots/${left[0].id}`)).status, 404);
  });

  // Serial (ava runs these before the concurrent tests): verify's refcount recount must not race other tests' commits.
  test.serial(`[${storage}] gc, verify jobs, stats and metrics answer a global admin`, async (t) => {
    const agent = await srv.makeToken('agent', ['adm1']);
    await backup(srv.url, agent, 'adm1', 'sda', [chunkOf('adm-a')]);
    // Another test may be pruning right now: the gc job then waits for that run and runs after it.
    const gc = await runJob(srv.url, admin, '/v1/gc');
    t.is(gc.state, 'done');
    t.is(gc.kind, 'gc');
    t.is(typeof gc.result.chunksDeleted, 'number');
    const started = await call(srv.url, admin, 'POST', '/v1/verify', { json: { readData: true } });
    t.is(started.status, 202);
    t.regex(started.json.job.id, /^[0-9a-f]{64}$/);
    const job = await pollUntil(
      async () => (await call(srv.url, admin, 'GET', `/v1/jobs/${started.json.job.id}`)).json.job,
      (j) => j.state !== 'running',
      'the verify job',
    );
    t.is(job.state, 'done');
    t.true(job.result.ok, JSON.stringify(job.result));
    t.true(job.result.chunksChecked > 0);
    t.is((await call(srv.url, admin, 'GET', `/v1/jobs/${'0'.repeat(64)}`)).status, 404);
    const stats = await call(srv.url, admin, 'GET', '/v1/stats');
    t.is(stats.json.scope, 'repository');
    t.true(stats.json.repository.uniqueChunks > 0);
    const metrics = await call(srv.url, admin, 'GET', '/metrics');
    t.is(metrics.status, 200);
    t.regex(
      metrics.bytes.toString(),
      /diskvault_http_requests_total\{method="POST",route="\/v1\/sessions",status="201"\} \d+/,
    );
    t.regex(metrics.bytes.toString(), /diskvault_snapshots \d+/);
  });

  test(`[${storage}] the request log names the token id and never the token`, async (t) => {
    const agent = await srv.makeToken('agent', ['log1']);
    await call(srv.url, agent, 'GET', '/v1/snapshots');
    const [, id, secret] = agent.split('_');
    const lines = srv.logs.filter((l) => l.includes(`"token":"${id}"`));
    t.true(lines.length > 0);
    const entry = JSON.parse(lines[0]);
    t.is(entry.method, 'GET');
    t.is(entry.route, '/v1/snapshots');
    t.is(entry.status, 200);
    t.is(typeof entry.ms, 'number');
    t.false(srv.logs.some((l) => l.includes(secret)));
  });

  test.serial(
    `[${storage}] tenants: B cannot learn, reference or fetch A's chunks; shared data is stored once`,
    async (t) => {
      const a1 = await srv.makeToken('agent', ['ta-web1'], 'tenant-a');
      const a2 = await srv.makeToken('agent', ['ta-web2'], 'tenant-a');
      const b = await srv.makeToken('agent', ['tb-web1'], 'tenant-b');
      const secret = chunkOf('tenant-a-secret');
      const absent = chunkOf('nobody-has-this');

      // Two hosts of A: the chunk is uploaded once.
      const first = await backup(srv.url, a1, 'ta-web1', 'sda', [secret]);
      t.is(first.uploaded, 1);
      const second = await backup(srv.url, a2, 'ta-web2', 'sda', [secret]);
      t.is(second.uploaded, 0);

      // B's missing query: A's chunk looks exactly like one nobody has.
      const sb = await openSession(srv.url, b, 'tb-web1');
      const m = await call(srv.url, b, 'POST', `/v1/sessions/${sb}/missing`, {
        json: { ids: [secret.id, absent.id] },
      });
      t.deepEqual(new Set(m.json.missing), new Set([secret.id, absent.id]));
      const mb = await call(srv.url, b, 'POST', `/v1/sessions/${sb}/missing`, {
        body: Buffer.from(secret.id + absent.id, 'hex'),
        headers: { 'content-type': 'application/x-diskvault-ids' },
      });
      t.deepEqual(mb.bytes, Buffer.from(secret.id + absent.id, 'hex'), 'the binary form is as blind');

      // B's commit naming A's chunk without uploading it: refused like a missing one.
      const refused = await commit(srv.url, b, sb, manifestFor('tb-web1', 'sda', [secret]));
      t.is(refused.status, 409);
      t.deepEqual(refused.json.details.missing, [secret.id]);

      // B cannot fetch it: the same answer as for an absent chunk.
      const fetchA = await call(srv.url, b, 'GET', `/v1/chunks/${secret.id}`);
      const fetchNone = await call(srv.url, b, 'GET', `/v1/chunks/${absent.id}`);
      t.is(fetchA.status, 404);
      t.is(fetchNone.status, 404);
      t.is(fetchA.json.code, fetchNone.json.code);
      t.is(fetchA.json.message.replace(secret.id, 'X'), fetchNone.json.message.replace(absent.id, 'X'));
      // Nor see A's snapshots.
      t.is((await call(srv.url, b, 'GET', `/v1/snapshots/${first.snapshot.id}`)).status, 404);

      // Once B uploads the same bytes, it may reference and read them; storage still holds one copy. The
      // answer is the one for a chunk nobody had: it must not tell B that A holds it.
      const stored = await putChunk(srv.url, b, sb, secret, true);
      t.is(stored.status, 201);
      t.deepEqual(stored.json, { id: secret.id, stored: true });
      t.is((await commit(srv.url, b, sb, manifestFor('tb-web1', 'sda', [secret]))).status, 201);
      const got = await call(srv.url, b, 'GET', `/v1/chunks/${secret.id}`);
      t.true(got.bytes.equals(secret.data));
      let copies = 0;
      const secretKey = (srv.repo as Repository).storedObjects.chunkKey(secret.id);
      for await (const e of srv.storage.list('chunks/')) {
        if (e.key === secretKey) copies++;
      }
      t.is(copies, 1);
      const all = await call(srv.url, admin, 'GET', '/v1/stats');
      const tenants = all.json.repository.perTenant.map((x: { tenant: string }) => x.tenant);
      t.true(tenants.includes('tenant-a') && tenants.includes('tenant-b'));
      // Refcount counts all three snapshots: the chunk survives gc until none references it.
      const verify = await call(srv.url, admin, 'POST', '/v1/verify', { json: {} });
      const job = await pollUntil(
        async () => (await call(srv.url, admin, 'GET', `/v1/jobs/${verify.json.job.id}`)).json.job,
        (j) => j.state !== 'running',
        'the verify job',
      );
      t.is(job.state, 'done');
      t.is(job.result.refcountMismatches, 0);
    },
  );

  test(`[${storage}] a tenant admin acts only within its tenant`, async (t) => {
    const agentC = await srv.makeToken('agent', ['tc-web1'], 'tenant-c');
    const agentD = await srv.makeToken('agent', ['td-web1'], 'tenant-d');
    const adminC = await srv.makeToken('admin', [], 'tenant-c');
    const c = await backup(srv.url, agentC, 'tc-web1', 'sda', [chunkOf('tc-1')]);
    const d = await backup(srv.url, agentD, 'td-web1', 'sda', [chunkOf('td-1')]);
    const list = await call(srv.url, adminC, 'GET', '/v1/snapshots');
    t.true(list.json.snapshots.every((s: { tenant: string }) => s.tenant === 'tenant-c'));
    t.true(list.json.snapshots.some((s: { id: string }) => s.id === c.snapshot.id));
    t.is((await call(srv.url, adminC, 'DELETE', `/v1/snapshots/${d.snapshot.id}`)).status, 404);
    t.is((await call(srv.url, adminC, 'GET', `/v1/chunks/${chunkOf('td-1').id}`)).status, 404);
    t.is((await call(srv.url, adminC, 'POST', '/v1/gc', { json: {} })).status, 403);
    t.is(
      (await call(srv.url, adminC, 'POST', '/v1/forget', { json: { policy: { last: 1 }, prune: true } }))
        .status,
      403,
    );
    const plan = await call(srv.url, adminC, 'POST', '/v1/forget', {
      json: { policy: { last: 5 }, dryRun: true },
    });
    t.is(plan.status, 200);
    t.true(plan.json.plan.groups.every((g: { host: string }) => g.host.startsWith('tc-')));
    const stats = await call(srv.url, adminC, 'GET', '/v1/stats');
    t.is(stats.json.scope, 'tenant');
    t.is(stats.json.tenant.tenant, 'tenant-c');
    t.is((await call(srv.url, agentD, 'GET', `/v1/snapshots/${d.snapshot.id}`)).status, 200);
  });

  test(`[${storage}] a full store answers 507 and the same upload succeeds once space is freed`, async (t) => {
    const full = await startTestServer({ storage, faults: true });
    try {
      const agent = await full.makeToken('agent', ['full1']);
      const session = await openSession(full.url, agent, 'full1');
      const c = chunkOf('full-1');
      full.faults!.setFaults({ failPutAfterBytes: 0 });
      const r = await putChunk(full.url, agent, session, c, true);
      t.is(r.status, 507);
      t.is(r.json.code, 'StorageFull');
      full.faults!.setFaults({});
      t.is((await putChunk(full.url, agent, session, c, true)).status, 201);
      t.is((await commit(full.url, agent, session, manifestFor('full1', 'sda', [c]))).status, 201);
    } finally {
      await full.stop();
    }
  });
}

/** node:http for what fetch hides: the encoded body, chunked transfer, headers without a body. */
function rawGet(url: string, token: string, path: string, headers: Record<string, string>) {
  return rawRequest(url, token, 'GET', path, undefined, headers);
}

function rawPut(
  url: string,
  token: string,
  path: string,
  body: Buffer | undefined,
  headers: Record<string, string>,
  method = 'PUT',
) {
  return rawRequest(url, token, method, path, body, headers);
}

function rawRequest(
  url: string,
  token: string,
  method: string,
  path: string,
  body: Buffer | undefined,
  headers: Record<string, string>,
): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const req = request({
      host: u.hostname,
      port: u.port,
      path,
      method,
      headers: { authorization: `Bearer ${token}`, ...headers },
    });
    req.on('response', (res) => {
      const parts: Buffer[] = [];
      res.on('data', (d: Buffer) => parts.push(d));
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(parts) }),
      );
      res.on('error', reject);
    });
    req.on('error', (err) => {
      // The server may cut the socket after answering an oversized body; the answer is what counts.
      reject(err);
    });
    if (body && headers['content-length'] === undefined) req.end(body);
    else if (body) req.end(body);
    else req.flushHeaders();
  });
}
