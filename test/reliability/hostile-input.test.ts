import path from 'node:path';
import test from 'ava';
import { compress } from 'zstd-napi';
import { type RunningService, startService } from '../../api/service.js';
import { createToken, revokeToken } from '../../api/token-store.js';
import {
  type Answer,
  backup,
  call,
  chunkOf,
  commit,
  manifestFor,
  openSession,
  putChunk,
} from '../helpers/api-client.js';
import { pollUntilSteady } from '../helpers/poll.js';
import { removeDir, storageListing, tempDir } from '../helpers/reliability-harness.js';
import { httpHead, type RawAnswer, rawExchange } from '../helpers/reliability-raw-http.js';
import { TEST_CHUNKER } from '../helpers/server.js';

/**
 * Every route fed what a broken or hostile client sends: malformed JSON, wrong types, huge and overlong
 * values, invalid ids, traversal, lying and truncated bodies, trickles, bad uploads and manifests, replays,
 * expired sessions, revoked tokens. Each case gets a 4xx with {code, message} (or, for a client that breaks
 * the transport, a closed connection within the configured timeouts), the repository does not change
 * (snapshot list and storage files identical), and the server keeps serving.
 * test/api/ already covers plain bad ids, traversal names, 401/403/404 scoping, 413 and 422 basics; this
 * file covers the rest, table by table.
 */
const LEASE_MS = 60_000;
const TIMEOUTS = { headersTimeoutMs: 2000, requestTimeoutMs: 4000, idleTimeoutMs: 1500 };
let dir: string;
let service: RunningService;
let url: string;
let admin: string;
let agent: string;
let clock = Date.now();
let session: string;
let before: { snapshots: string; files: Map<string, number> };

async function repositoryState() {
  return {
    snapshots: JSON.stringify(service.repo.listSnapshots()),
    files: await storageListing(path.join(dir, 'data')),
  };
}

test.before(async () => {
  dir = await tempDir('hostile');
  service = await startService({
    host: '127.0.0.1',
    port: 0,
    dataDir: path.join(dir, 'data'),
    chunker: TEST_CHUNKER,
    sessionLeaseMs: LEASE_MS,
    now: () => clock,
    log: () => {},
    server: TIMEOUTS,
  });
  url = service.url;
  admin = service.createdAdminToken!;
  agent = (await createToken(path.join(dir, 'data'), { role: 'agent', hosts: ['hx'] })).token;
  const other = (await createToken(path.join(dir, 'data'), { role: 'agent', hosts: ['hy'] })).token;
  await backup(url, agent, 'hx', 'sda', [chunkOf('hx-1'), chunkOf('hx-2')]);
  await backup(url, other, 'hy', 'sda', [chunkOf('hy-1')]);
  session = await openSession(url, agent, 'hx');
  before = await repositoryState();
});

test.after.always(async () => {
  await service?.stop(200);
  if (dir) await removeDir(dir);
});

async function assertUnharmed(t: import('ava').ExecutionContext, what: string): Promise<void> {
  const health = await call(url, undefined, 'GET', '/v1/health');
  t.is(health.status, 200, `${what}: the server still serves`);
}

function assertRefused(t: import('ava').ExecutionContext, a: Answer, what: string, status?: number): void {
  t.true(a.status >= 400 && a.status < 500, `${what}: got ${a.status} ${a.bytes.toString().slice(0, 200)}`);
  if (status) t.is(a.status, status, what);
  t.is(typeof a.json?.code, 'string', `${what}: body has a code`);
  t.is(typeof a.json?.message, 'string', `${what}: body has a message`);
}

const json = (body: string) => ({ body: Buffer.from(body), headers: { 'content-type': 'application/json' } });
const hex = (c: string) => c.repeat(64);
const big = (n: number) => 'a'.repeat(n);

/** [title, request, expected status or undefined for "some 4xx"] */
type Row = [string, () => Promise<Answer>, number?];

const malformed: Row[] = [
  ['session: truncated JSON', () => call(url, agent, 'POST', '/v1/sessions', json('{"host":"hx","di')), 400],
  ['session: JSON array', () => call(url, agent, 'POST', '/v1/sessions', json('[]')), 400],
  ['session: JSON null', () => call(url, agent, 'POST', '/v1/sessions', json('null')), 400],
  ['session: JSON string', () => call(url, agent, 'POST', '/v1/sessions', json('"hx"')), 400],
  [
    'session: host is a number',
    () => call(url, agent, 'POST', '/v1/sessions', { json: { host: 5, disk: 'sda' } }),
    400,
  ],
  [
    'session: host is an array',
    () => call(url, agent, 'POST', '/v1/sessions', { json: { host: ['hx'], disk: 'sda' } }),
    400,
  ],
  [
    'session: host of 129 characters',
    () => call(url, admin, 'POST', '/v1/sessions', { json: { host: big(129), disk: 'sda' } }),
    400,
  ],
  [
    'session: host of 1 MB',
    () => call(url, admin, 'POST', '/v1/sessions', { json: { host: big(1 << 20), disk: 'sda' } }),
    // Over the 64 KiB cap of a JSON body: refused before it is parsed.
    413,
  ],
  [
    'session: host with NUL',
    () => call(url, admin, 'POST', '/v1/sessions', { json: { host: 'hx\u0000', disk: 'sda' } }),
    400,
  ],
  [
    'session: host with newline',
    () => call(url, admin, 'POST', '/v1/sessions', { json: { host: 'hx\n', disk: 'sda' } }),
    400,
  ],
  [
    'session: non-ASCII host',
    () => call(url, admin, 'POST', '/v1/sessions', { json: { host: 'hé', disk: 'sda' } }),
    400,
  ],
  [
    'session: disk "."',
    () => call(url, admin, 'POST', '/v1/sessions', { json: { host: 'hx', disk: '.' } }),
    400,
  ],
  [
    'session: text/plain body',
    () =>
      call(url, agent, 'POST', '/v1/sessions', {
        body: Buffer.from('{"host":"hx","disk":"sda"}'),
        headers: { 'content-type': 'text/plain' },
      }),
    400,
  ],
  [
    'session: 9 MiB JSON body',
    () =>
      call(
        url,
        agent,
        'POST',
        '/v1/sessions',
        json(JSON.stringify({ host: 'hx', disk: 'sda', pad: big(9 << 20) })),
      ),
    413,
  ],
  [
    'missing: ids is a string',
    () => call(url, agent, 'POST', `/v1/sessions/${session}/missing`, { json: { ids: 'abc' } }),
    400,
  ],
  [
    'missing: ids are numbers',
    () => call(url, agent, 'POST', `/v1/sessions/${session}/missing`, { json: { ids: [1, 2] } }),
    400,
  ],
  [
    'missing: ids null',
    () => call(url, agent, 'POST', `/v1/sessions/${session}/missing`, { json: { ids: null } }),
    400,
  ],
  [
    'missing: uppercase id',
    () => call(url, agent, 'POST', `/v1/sessions/${session}/missing`, { json: { ids: [hex('A')] } }),
    400,
  ],
  [
    'missing: 65-character id',
    () => call(url, agent, 'POST', `/v1/sessions/${session}/missing`, { json: { ids: [`${hex('a')}a`] } }),
    400,
  ],
  [
    'missing: 50,000 ids of which the last is bad',
    () =>
      call(url, agent, 'POST', `/v1/sessions/${session}/missing`, {
        json: { ids: [...Array.from({ length: 49_999 }, () => hex('b')), 'x'] },
      }),
    400,
  ],
  [
    'missing: session id too short',
    () => call(url, agent, 'POST', `/v1/sessions/${'a'.repeat(31)}/missing`, { json: { ids: [] } }),
    400,
  ],
  [
    'missing: session id uppercase',
    () => call(url, agent, 'POST', `/v1/sessions/${session.toUpperCase()}/missing`, { json: { ids: [] } }),
    400,
  ],
  [
    'missing: session id with traversal',
    () => call(url, agent, 'POST', '/v1/sessions/..%2F..%2Findex.sqlite/missing', { json: { ids: [] } }),
  ],
  [
    'missing: unknown session',
    () => call(url, agent, 'POST', `/v1/sessions/${'c'.repeat(32)}/missing`, { json: { ids: [] } }),
    404,
  ],
  [
    'chunk: uppercase id',
    () => call(url, agent, 'PUT', `/v1/chunks/${hex('A')}?session=${session}`, { body: Buffer.from('x') }),
    400,
  ],
  [
    'chunk: 63-character id',
    () =>
      call(url, agent, 'PUT', `/v1/chunks/${'a'.repeat(63)}?session=${session}`, { body: Buffer.from('x') }),
    400,
  ],
  [
    'chunk: traversal id',
    () =>
      call(url, agent, 'PUT', `/v1/chunks/..%2F..%2Fconfig?session=${session}`, { body: Buffer.from('x') }),
  ],
  [
    'chunk: unknown session',
    () =>
      call(url, agent, 'PUT', `/v1/chunks/${chunkOf('u').id}?session=${'e'.repeat(32)}`, {
        body: chunkOf('u').data,
      }),
    404,
  ],
  [
    'chunk: empty body',
    () =>
      call(url, agent, 'PUT', `/v1/chunks/${chunkOf('e').id}?session=${session}`, { body: Buffer.alloc(0) }),
    400,
  ],
  [
    'chunk: zstd payload of other bytes',
    () =>
      call(url, agent, 'PUT', `/v1/chunks/${chunkOf('z1').id}?session=${session}`, {
        body: compress(chunkOf('z2').data),
        headers: { 'content-encoding': 'zstd' },
      }),
    422,
  ],
  [
    'chunk: zstd header on garbage',
    () =>
      call(url, agent, 'PUT', `/v1/chunks/${chunkOf('g').id}?session=${session}`, {
        body: Buffer.from('not zstd at all'),
        headers: { 'content-encoding': 'zstd' },
      }),
  ],
  [
    'chunk: zstd bomb past the chunker max',
    () =>
      call(url, agent, 'PUT', `/v1/chunks/${hex('f')}?session=${session}`, {
        body: compress(Buffer.alloc(64 << 20)),
        headers: { 'content-encoding': 'zstd' },
      }),
  ],
  [
    'chunk: raw body one byte over max',
    () =>
      call(url, agent, 'PUT', `/v1/chunks/${hex('f')}?session=${session}`, {
        body: Buffer.alloc(TEST_CHUNKER.max + 1),
      }),
    413,
  ],
  [
    'commit: manifest for another host',
    () => commit(url, agent, session, manifestFor('hy', 'sda', [chunkOf('hx-1')])),
  ],
  [
    'commit: truncated manifest',
    () =>
      commit(
        url,
        agent,
        session,
        manifestFor('hx', 'sda', [chunkOf('hx-1'), chunkOf('hx-2')]).subarray(0, -10),
      ),
    400,
  ],
  [
    'commit: manifest with trailing garbage',
    () =>
      commit(
        url,
        agent,
        session,
        Buffer.concat([manifestFor('hx', 'sda', [chunkOf('hx-1')]), Buffer.from('garbage')]),
      ),
    400,
  ],
  [
    'commit: manifest whose size disagrees with its entries',
    () => commit(url, agent, session, manifestFor('hx', 'sda', [chunkOf('hx-1')], { size: 1 })),
    400,
  ],
  ['snapshot: unknown id', () => call(url, agent, 'GET', `/v1/snapshots/${hex('0')}`), 404],
  ['snapshot: id with encoded NUL', () => call(url, agent, 'GET', '/v1/snapshots/%00'), 400],
  ['job: malformed id', () => call(url, admin, 'GET', '/v1/jobs/..%2F..'), 400],
  ['job: unknown id', () => call(url, admin, 'GET', `/v1/jobs/${hex('9')}`), 404],
  [
    'forget: count as a string',
    () => call(url, admin, 'POST', '/v1/forget', { json: { policy: { last: '3' } } }),
    400,
  ],
  [
    'forget: fractional count',
    () => call(url, admin, 'POST', '/v1/forget', { json: { policy: { last: 1.5 } } }),
    400,
  ],
  [
    'forget: count below -1',
    () => call(url, admin, 'POST', '/v1/forget', { json: { policy: { last: -2 } } }),
    400,
  ],
  [
    'forget: unknown policy key',
    () => call(url, admin, 'POST', '/v1/forget', { json: { policy: { last: 1, keepAll: true } } }),
    400,
  ],
  [
    'forget: tags not an array',
    () => call(url, admin, 'POST', '/v1/forget', { json: { policy: { tags: 'x' } } }),
    400,
  ],
  [
    'forget: dryRun as a string',
    () => call(url, admin, 'POST', '/v1/forget', { json: { policy: { last: 1 }, dryRun: 'yes' } }),
    400,
  ],
  [
    'forget: host with traversal',
    () => call(url, admin, 'POST', '/v1/forget', { json: { policy: { last: 1 }, host: '../hx' } }),
    400,
  ],
  [
    'forget: policy as an array',
    () => call(url, admin, 'POST', '/v1/forget', { json: { policy: [1] } }),
    400,
  ],
  [
    'verify: readData as a string',
    () => call(url, admin, 'POST', '/v1/verify', { json: { readData: 'true' } }),
    400,
  ],
];

for (const [title, send, status] of malformed) {
  test.serial(`hostile input is refused with a 4xx and {code, message}: ${title}`, async (t) => {
    assertRefused(t, await send(), title, status);
    await assertUnharmed(t, title);
  });
}

test.serial('a commit replayed after it succeeded is refused and adds no second snapshot', async (t) => {
  const s = await openSession(url, agent, 'hx');
  const manifest = manifestFor('hx', 'sda', [chunkOf('hx-1')]);
  const first = await commit(url, agent, s, manifest);
  t.is(first.status, 201);
  const count = service.repo.listSnapshots().length;
  assertRefused(t, await commit(url, agent, s, manifest), 'replayed commit', 404);
  t.is(service.repo.listSnapshots().length, count);
  // Not part of the untouched state: remove it again so the end-of-file comparison holds.
  await service.repo.deleteSnapshot(first.json.snapshot.id);
});

test.serial('a revoked token cannot use the session it opened', async (t) => {
  const token = (await createToken(path.join(dir, 'data'), { role: 'agent', hosts: ['hx'] })).token;
  const s = await openSession(url, token, 'hx');
  await revokeToken(path.join(dir, 'data'), token.split('_')[1]);
  assertRefused(t, await putChunk(url, token, s, chunkOf('revoked')), 'upload after revocation', 401);
  assertRefused(
    t,
    await commit(url, token, s, manifestFor('hx', 'sda', [chunkOf('hx-1')])),
    'commit after revocation',
    401,
  );
});

/** Raw-socket cases: the server answers 4xx JSON, or cuts the connection within its timeouts. */
function assertCutOrRefused(
  t: import('ava').ExecutionContext,
  a: RawAnswer,
  what: string,
  withinMs: number,
): void {
  if (a.status === 0) t.true(a.closed, `${what}: no answer, so the connection must be closed`);
  else {
    t.true(a.status >= 400 && a.status < 500, `${what}: got ${a.status} ${a.body.slice(0, 200)}`);
    let body: { code?: unknown; message?: unknown } = {};
    try {
      body = JSON.parse(a.body);
    } catch {
      // fall through to the assertion below
    }
    t.true(
      typeof body.code === 'string' && typeof body.message === 'string',
      `${what}: body ${JSON.stringify(a.body.slice(0, 200))} is {code, message}`,
    );
  }
  t.true(a.ms <= withinMs, `${what}: settled after ${a.ms} ms`);
}

test.serial('a body shorter than its Content-Length, then closed, changes nothing', async (t) => {
  const a = await rawExchange({
    url,
    head: httpHead('POST', '/v1/sessions', {
      authorization: `Bearer ${agent}`,
      'content-type': 'application/json',
      'content-length': 200,
    }),
    pieces: [Buffer.from('{"host":"hx",')],
    endAfter: true,
    waitMs: 5000,
  });
  assertCutOrRefused(t, a, 'truncated body', 5000);
  await assertUnharmed(t, 'truncated body');
});

test.serial(
  'a chunk body shorter than its Content-Length is cut after the idle timeout and stores nothing',
  async (t) => {
    const c = chunkOf('short-body');
    const session = await openSession(url, agent, 'hx');
    const a = await rawExchange({
      url,
      head: httpHead('PUT', `/v1/chunks/${c.id}?session=${session}`, {
        authorization: `Bearer ${agent}`,
        'content-length': c.data.length,
      }),
      pieces: [c.data.subarray(0, 1000)],
      waitMs: 8000,
    });
    assertCutOrRefused(t, a, 'Content-Length larger than the body', TIMEOUTS.idleTimeoutMs + 3000);
    await assertUnharmed(t, 'Content-Length larger than the body');
  },
);

test.serial('a Content-Length smaller than the body is read as that many bytes and refused', async (t) => {
  const c = chunkOf('long-body');
  const session = await openSession(url, agent, 'hx');
  const a = await rawExchange({
    url,
    head: httpHead('PUT', `/v1/chunks/${c.id}?session=${session}`, {
      authorization: `Bearer ${agent}`,
      'content-length': 100,
    }),
    pieces: [c.data],
    waitMs: 5000,
  });
  assertCutOrRefused(t, a, 'Content-Length smaller than the body', 5000);
  t.not(a.status, 0, 'the first 100 bytes are a complete (wrong) upload and get an answer');
  await assertUnharmed(t, 'Content-Length smaller than the body');
});

test.serial('a chunk body that trickles is cut by the request timeout', async (t) => {
  const c = chunkOf('trickle');
  const session = await openSession(url, agent, 'hx');
  const pieces = Array.from({ length: 40 }, (_, i) => c.data.subarray(i * 10, i * 10 + 10));
  const a = await rawExchange({
    url,
    head: httpHead('PUT', `/v1/chunks/${c.id}?session=${session}`, {
      authorization: `Bearer ${agent}`,
      'content-length': c.data.length,
    }),
    pieces,
    gapMs: 250,
    waitMs: 12_000,
  });
  assertCutOrRefused(t, a, 'trickling body', TIMEOUTS.requestTimeoutMs + 3000);
  await assertUnharmed(t, 'trickling body');
});

test.serial('request headers that trickle are cut by the headers timeout', async (t) => {
  const head = httpHead('GET', '/v1/snapshots', { authorization: `Bearer ${agent}` });
  const a = await rawExchange({
    url,
    head: head.slice(0, 10),
    pieces: [...head.slice(10, 60)].map((ch) => Buffer.from(ch)),
    gapMs: 150,
    waitMs: 10_000,
  });
  assertCutOrRefused(t, a, 'slowloris head', TIMEOUTS.headersTimeoutMs + 3000);
  await assertUnharmed(t, 'slowloris head');
});

test.serial('an expired session is refused on every route that takes it', async (t) => {
  const s = await openSession(url, agent, 'hx');
  clock += LEASE_MS * 3;
  const c = chunkOf('expired');
  assertRefused(t, await putChunk(url, agent, s, c), 'upload to an expired session', 404);
  assertRefused(
    t,
    await call(url, agent, 'POST', `/v1/sessions/${s}/missing`, { json: { ids: [c.id] } }),
    'missing on an expired session',
    404,
  );
  assertRefused(
    t,
    await commit(url, agent, s, manifestFor('hx', 'sda', [chunkOf('hx-1')])),
    'commit on an expired session',
    404,
  );
});

test.serial(
  'after every hostile request the snapshot list and the storage files are exactly as before',
  async (t) => {
    // Requests cut off mid-body may still be unwinding: compare once the repository stops changing.
    const after = await pollUntilSteady(repositoryState, 'the repository', {
      quietMs: 200,
      key: (s) => JSON.stringify([s.snapshots, [...s.files.entries()].sort()]),
    });
    t.is(after.snapshots, before.snapshots);
    t.deepEqual([...after.files.entries()].sort(), [...before.files.entries()].sort());
  },
);
