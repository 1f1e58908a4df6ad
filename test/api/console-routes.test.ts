import test from 'ava';
import { backup, call, chunkOf } from '../helpers/api-client.js';
import { startTestServer, type TestServer } from '../helpers/server.js';

// The read-only routes and token management the web console uses, over a real server: exact new-data
// figures, who sees what, and the headers /ui/ is served with.

let srv: TestServer;
let admin: string;
let agent: string;
let acmeAdmin: string;
const ids: string[] = [];

// Chunks of distinct sizes, so every byte total names exactly which chunks were counted.
const a = chunkOf('a', 10_000);
const b = chunkOf('b', 20_000);
const c = chunkOf('c', 40_000);
const d = chunkOf('d', 80_000);
const e = chunkOf('e', 160_000);

test.before(async () => {
  srv = await startTestServer({ storage: 'local' });
  admin = srv.adminToken;
  agent = await srv.makeToken('agent', ['web1']);
  acmeAdmin = await srv.makeToken('admin', [], 'acme');
  const nights: [string, (typeof a)[]][] = [
    ['2026-11-01', [a, b, c, a]], // new: a, b, c once each (a repeats within the image)
    ['2026-11-02', [a, b, d, d]], // new over night 1: d, once
    ['2026-11-03', [a, e, c, b]], // new over night 2: e and c (c was in night 1, not night 2)
  ];
  // Dated nights in the past are imports: only an admin token may commit a backdated time.
  for (const [day, chunks] of nights) {
    const { snapshot } = await backup(srv.url, admin, 'web1', 'sda', chunks, {
      time: `${day}T02:00:00.000Z`,
    });
    ids.push(snapshot.id);
  }
  // acme's own agent token: the token listings below count it.
  await srv.makeToken('agent', ['shop'], 'acme');
  await backup(srv.url, acmeAdmin, 'shop', 'vda', [a, e], { time: '2026-11-03T03:00:00.000Z' });
});
test.after.always(async () => {
  await srv?.stop();
});

test.serial('GET /v1/whoami names the calling token, its role, tenant and hosts', async (t) => {
  const me = await call(srv.url, admin, 'GET', '/v1/whoami');
  t.is(me.status, 200);
  t.deepEqual(
    { ...me.json, tokenId: undefined },
    { tokenId: undefined, role: 'admin', tenant: '*', hosts: [] },
  );
  t.is(me.json.tokenId, admin.split('_')[1]);
  t.like((await call(srv.url, agent, 'GET', '/v1/whoami')).json, {
    role: 'agent',
    tenant: 'default',
    hosts: ['web1'],
  });
  t.like((await call(srv.url, acmeAdmin, 'GET', '/v1/whoami')).json, { role: 'admin', tenant: 'acme' });
  t.is((await call(srv.url, undefined, 'GET', '/v1/whoami')).status, 401);
});

test.serial(
  'GET /v1/timeline gives each snapshot the distinct chunks it added over the one before',
  async (t) => {
    const r = await call(srv.url, admin, 'GET', '/v1/timeline?host=web1&disk=sda');
    t.is(r.status, 200, r.bytes.toString());
    t.deepEqual(
      r.json.snapshots.map((s: { id: string; newChunks: number; newBytes: number }) => [
        s.id,
        s.newChunks,
        s.newBytes,
      ]),
      [
        [ids[0], 3, 70_000],
        [ids[1], 1, 80_000],
        [ids[2], 2, 200_000],
      ],
    );
    t.is(r.json.tenant, 'default');
    // The agent of the host may read it; another tenant's admin finds nothing; an unknown disk is 404.
    t.is((await call(srv.url, agent, 'GET', '/v1/timeline?host=web1&disk=sda')).status, 200);
    t.is((await call(srv.url, acmeAdmin, 'GET', '/v1/timeline?host=web1&disk=sda')).status, 404);
    t.is(
      (await call(srv.url, acmeAdmin, 'GET', '/v1/timeline?host=web1&disk=sda&tenant=default')).status,
      404,
    );
    t.is((await call(srv.url, admin, 'GET', '/v1/timeline?host=web1&disk=nope')).status, 404);
    t.is((await call(srv.url, admin, 'GET', '/v1/timeline?host=../x&disk=sda')).status, 400);
    const other = await srv.makeToken('agent', ['db1']);
    t.is((await call(srv.url, other, 'GET', '/v1/timeline?host=web1&disk=sda')).status, 403);
  },
);

test.serial(
  "GET /v1/disks: each visible disk with its newest snapshot and that snapshot's new data",
  async (t) => {
    const all = await call(srv.url, admin, 'GET', '/v1/disks');
    t.is(all.status, 200);
    t.deepEqual(
      all.json.disks.map(
        (x: {
          tenant: string;
          host: string;
          disk: string;
          snapshots: number;
          newest: { id: string; newBytes: number; newChunks: number; size: number };
        }) => [x.tenant, x.host, x.disk, x.snapshots, x.newest.newChunks, x.newest.newBytes, x.newest.size],
      ),
      [
        ['acme', 'shop', 'vda', 1, 2, 170_000, 170_000],
        ['default', 'web1', 'sda', 3, 2, 200_000, 230_000],
      ],
    );
    const acme = await call(srv.url, acmeAdmin, 'GET', '/v1/disks');
    t.deepEqual(
      acme.json.disks.map((x: { host: string }) => x.host),
      ['shop'],
    );
  },
);

test.serial(
  'a forgotten snapshot makes the next one count its new data against the one before it',
  async (t) => {
    t.is((await call(srv.url, admin, 'DELETE', `/v1/snapshots/${ids[1]}`)).status, 204);
    const r = await call(srv.url, admin, 'GET', '/v1/timeline?host=web1&disk=sda');
    // Night 3 over night 1 (a, b, c): only e is new.
    t.deepEqual(
      r.json.snapshots.map((s: { id: string; newChunks: number; newBytes: number }) => [
        s.id,
        s.newChunks,
        s.newBytes,
      ]),
      [
        [ids[0], 3, 70_000],
        [ids[2], 1, 160_000],
      ],
    );
  },
);

test.serial(
  'tokens over the API: a global admin manages all, a tenant admin its tenant only, agents none',
  async (t) => {
    const list = async (token: string) =>
      (await call(srv.url, token, 'GET', '/v1/tokens')).json.tokens as {
        id: string;
        tenant: string;
        hash?: string;
      }[];
    const everyone = await list(admin);
    t.is(everyone.length, 5);
    t.true(everyone.every((x) => x.hash === undefined));
    t.deepEqual(
      (await list(acmeAdmin)).map((x) => x.tenant),
      ['acme', 'acme'],
    );
    t.is((await call(srv.url, agent, 'GET', '/v1/tokens')).status, 403);

    // A new token's secret is in the answer once, and it works at once.
    const made = await call(srv.url, acmeAdmin, 'POST', '/v1/tokens', {
      json: { role: 'agent', hosts: ['shop2'] },
    });
    t.is(made.status, 201, made.bytes.toString());
    t.like(made.json.token, { role: 'agent', tenant: 'acme', hosts: ['shop2'] });
    t.like((await call(srv.url, made.json.secret, 'GET', '/v1/whoami')).json, {
      role: 'agent',
      tenant: 'acme',
      hosts: ['shop2'],
    });
    t.false(JSON.stringify(await list(admin)).includes(made.json.secret.split('_')[2]));

    // A tenant admin cannot reach outside its tenant or make a global admin.
    const globalAsk = await call(srv.url, acmeAdmin, 'POST', '/v1/tokens', {
      json: { role: 'admin', tenant: '*' },
    });
    t.is(globalAsk.status, 403);
    t.is(
      (
        await call(srv.url, acmeAdmin, 'POST', '/v1/tokens', {
          json: { role: 'agent', hosts: ['x'], tenant: 'default' },
        })
      ).status,
      403,
    );
    const acmeAdmin2 = await call(srv.url, acmeAdmin, 'POST', '/v1/tokens', { json: { role: 'admin' } });
    t.like(acmeAdmin2.json.token, { role: 'admin', tenant: 'acme' });

    // Bad requests.
    t.is((await call(srv.url, admin, 'POST', '/v1/tokens', { json: { role: 'agent' } })).status, 400);
    t.is((await call(srv.url, admin, 'POST', '/v1/tokens', { json: { role: 'root' } })).status, 400);
    t.is(
      (await call(srv.url, admin, 'POST', '/v1/tokens', { json: { role: 'admin', hosts: ['web1'] } })).status,
      400,
    );
    t.is(
      (await call(srv.url, admin, 'POST', '/v1/tokens', { json: { role: 'agent', hosts: ['a/b'] } })).status,
      400,
    );

    // Revocation: another tenant's token reads as absent, the token in use cannot revoke itself.
    const agentId = agent.split('_')[1];
    t.is((await call(srv.url, acmeAdmin, 'DELETE', `/v1/tokens/${agentId}`)).status, 404);
    t.is((await call(srv.url, agent, 'GET', '/v1/whoami')).status, 200);
    t.is((await call(srv.url, acmeAdmin, 'DELETE', `/v1/tokens/${acmeAdmin.split('_')[1]}`)).status, 409);
    t.is((await call(srv.url, acmeAdmin, 'DELETE', `/v1/tokens/${made.json.token.id}`)).status, 204);
    t.is((await call(srv.url, made.json.secret, 'GET', '/v1/whoami')).status, 401);
    t.is((await call(srv.url, admin, 'DELETE', '/v1/tokens/nothex')).status, 400);
    t.is((await call(srv.url, admin, 'DELETE', `/v1/tokens/${'0'.repeat(16)}`)).status, 404);
  },
);

test.serial('GET /v1/jobs lists the verify jobs a token may see, newest first', async (t) => {
  const started = await call(srv.url, admin, 'POST', '/v1/verify', { json: {} });
  t.is(started.status, 202);
  const deadline = Date.now() + 20_000;
  let jobs: { id: string; state: string; kind: string; result?: { ok: boolean } }[] = [];
  while (Date.now() < deadline) {
    jobs = (await call(srv.url, admin, 'GET', '/v1/jobs?kind=verify')).json.jobs;
    if (jobs[0]?.state !== 'running') break;
    await new Promise((r) => setTimeout(r, 50));
  }
  t.is(jobs.length, 1);
  t.like(jobs[0], { id: started.json.job.id, kind: 'verify', state: 'done', result: { ok: true } });
  t.deepEqual((await call(srv.url, acmeAdmin, 'GET', '/v1/jobs')).json.jobs, []);
  t.is((await call(srv.url, agent, 'GET', '/v1/jobs')).status, 403);
  t.is((await call(srv.url, admin, 'GET', '/v1/jobs?kind=../x')).status, 400);
});

test.serial(
  '/ui/ is served with a self-only CSP, no framing, no sniffing, and nothing outside its folder',
  async (t) => {
    const page = await call(srv.url, undefined, 'GET', '/ui/');
    t.is(page.status, 200);
    t.regex(page.headers.get('content-type') ?? '', /^text\/html/);
    t.regex(page.bytes.toString(), /<script type="module" src="app.js"><\/script>/);
    const csp = page.headers.get('content-security-policy') ?? '';
    t.regex(csp, /default-src 'none'/);
    t.regex(csp, /script-src 'self'(;|$)/);
    t.regex(csp, /frame-ancestors 'none'/);
    t.notRegex(csp, /unsafe-inline|unsafe-eval|https?:/);
    t.is(page.headers.get('x-content-type-options'), 'nosniff');
    t.is(page.headers.get('x-frame-options'), 'DENY');
    t.is(page.headers.get('referrer-policy'), 'no-referrer');
    const script = await call(srv.url, undefined, 'GET', '/ui/app.js');
    t.is(script.status, 200);
    t.regex(script.headers.get('content-type') ?? '', /^text\/javascript/);
    for (const path of [
      '/ui/..%2f..%2fpackage.json',
      '/ui/%2e%2e/api/server.js',
      '/ui/nope.js',
      '/ui/%E0%A4%A',
      '/ui/.hidden.js',
    ]) {
      const r = await call(srv.url, undefined, 'GET', path);
      t.is(r.status, 404, path);
      t.is(r.json.code, 'NotFound', path);
    }
    const bare = await fetch(`${srv.url}/ui`, { redirect: 'manual' });
    t.is(bare.status, 302);
    t.is(bare.headers.get('location'), '/ui/');
  },
);
