import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { backup, call, chunkOf } from '../helpers/api-client.js';
import { runCli } from '../helpers/backup-e2e.js';
import { curl, execFileP, imageFixture } from '../helpers/image-fixture.js';
import { httpHead, rawExchange } from '../helpers/reliability-raw-http.js';
import { startTestServer } from '../helpers/server.js';

/** `diskvault share …` with the fixture's admin token (or another), returning stdout. */
async function share(
  env: Record<string, string>,
  args: string[],
): Promise<{ code: number | null; out: string; err: string }> {
  const r = await runCli(['share', ...args], env);
  return { code: r.code, out: r.stdout, err: r.stderr };
}

test('a share link serves the image without a token to curl, curl -C - and qemu-img, until revoked', async (t) => {
  const f = await imageFixture();
  t.teardown(() => f.close());
  const made = await share(f.env, [f.snapshot.slice(0, 12), '--expires', '2h']);
  t.is(made.code, 0, made.err);
  const url = made.out.trim();
  t.regex(url, new RegExp(`^${f.server.url}/v1/share/[0-9a-f]{16}_[0-9a-f]{64}/image$`));
  const id = /share\/([0-9a-f]{16})_/.exec(url)?.[1] as string;
  const secret = /_([0-9a-f]{64})\//.exec(url)?.[1] as string;

  const out = join(f.dir, 'curl.img');
  const got = await curl(['-f', '-o', out, url]);
  t.is(got.code, 0, got.stderr);
  t.true((await readFile(out)).equals(f.image));

  // A first part, then the rest with -C -.
  const resumed = join(f.dir, 'resumed.img');
  t.is((await curl(['-f', '-r', '0-1234566', '-o', resumed, url])).code, 0);
  t.is((await curl(['-f', '-C', '-', '-o', resumed, url])).code, 0);
  t.true((await readFile(resumed)).equals(f.image));

  const converted = join(f.dir, 'converted.img');
  // One coroutine: qemu's curl driver (7.x) can hang with several requests in flight (docs/disaster-recovery.md).
  await execFileP('qemu-img', ['convert', '-m', '1', '-f', 'raw', '-O', 'raw', url, converted]);
  t.true((await readFile(converted)).equals(f.image));

  // A VM's disk: a qcow2 overlay whose backing file is the link; reads fall through to the backup.
  const overlay = join(f.dir, 'overlay.qcow2');
  await execFileP('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', url, '-F', 'raw', overlay]);
  await execFileP('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', overlay, f.source]);
  const flat = join(f.dir, 'flat.img');
  await execFileP('qemu-img', ['convert', '-m', '1', '-f', 'qcow2', '-O', 'raw', overlay, flat]);
  t.true((await readFile(flat)).equals(f.image));

  // Listed (without any secret), in a 0600 file that holds only the secret's hash; the log has the id only.
  const listed = await share(f.env, ['--list', '--json']);
  t.is(listed.code, 0, listed.err);
  const shares = JSON.parse(listed.out) as { id: string; snapshot: string; host: string }[];
  t.deepEqual(
    shares.map((s) => [s.id, s.snapshot, s.host]),
    [[id, f.snapshot, f.host]],
  );
  t.false(listed.out.includes(secret));
  const file = join(f.server.dataDir, 'shares.json');
  t.is((await stat(file)).mode & 0o777, 0o600);
  t.false((await readFile(file, 'utf8')).includes(secret));
  t.false(f.server.logs.some((l) => l.includes(secret)));
  t.true(f.server.logs.some((l) => l.includes(`/v1/share/${id}_…/image`)));

  const revoked = await share(f.env, ['--revoke', id]);
  t.is(revoked.code, 0, revoked.err);
  const after = await fetch(url);
  t.is(after.status, 404);
  t.deepEqual(await after.json(), { code: 'NotFound', message: 'no such share link' });
  t.is((await fetch(url, { method: 'HEAD' })).status, 404);
  t.is((await curl(['-f', '-o', join(f.dir, 'none.img'), url])).code, 22);
  t.is((await share(f.env, ['--list', '--json'])).out.trim(), '[]');
});

test('the request log never holds a link’s secret, however the request spells the path that reaches the link', async (t) => {
  const srv = await startTestServer();
  t.teardown(() => srv.stop());
  const agent = await srv.makeToken('agent', ['lg-web1']);
  const { snapshot } = await backup(srv.url, agent, 'lg-web1', 'sda', [chunkOf('share-log', 30_000)]);
  const made = await call(srv.url, agent, 'POST', '/v1/shares', {
    json: { snapshot: snapshot.id, expiresInSeconds: 600 },
  });
  t.is(made.status, 201, made.bytes.toString());
  const path = made.json.path as string;
  const [, id, secret] = /^\/v1\/share\/([0-9a-f]{16})_([0-9a-f]{64})\/image$/.exec(path) ?? [];
  t.truthy(secret, path);

  // restify routes each of these to the link's handler: the link's first character percent-encoded, the
  // whole link encoded, and an absolute-form request target (`GET http://host/v1/share/…`).
  const encodedFirst = path.replace(
    /^\/v1\/share\/(.)/,
    (_, c: string) => `/v1/share/%${c.charCodeAt(0).toString(16)}`,
  );
  const encode = (text: string) => [...text].map((c) => `%${c.charCodeAt(0).toString(16)}`).join('');
  const encodedAll = `/v1/share/${encode(`${id}_`)}${encode(secret)}/image`;
  for (const target of [path, encodedFirst, encodedAll]) {
    const r = await call(srv.url, undefined, 'GET', target);
    t.is(r.status, 200, target);
  }
  const absolute = await rawExchange({
    url: srv.url,
    head: httpHead('GET', `http://127.0.0.1${path}`, { connection: 'close' }),
    waitMs: 5_000,
  });
  t.is(absolute.status, 200, absolute.body.slice(0, 200));
  // A path the link's route does not take, spelled any of those ways, is not logged with the secret either.
  t.is((await call(srv.url, undefined, 'GET', `${encodedFirst}x`)).status, 404);
  const unrouted = await rawExchange({
    url: srv.url,
    head: httpHead('GET', `http://127.0.0.1/v1/%73hare/${id}_${secret}/imagex`, { connection: 'close' }),
    waitMs: 5_000,
  });
  t.is(unrouted.status, 404);

  const requests = srv.logs.map((l) => JSON.parse(l)).filter((l) => typeof l.path === 'string');
  const served = requests.filter((l) => l.route === '/v1/share/:link/image');
  t.is(served.length, 4);
  for (const l of served) t.is(l.path, `/v1/share/${id}_…/image`);
  t.is(requests.filter((l) => l.route === 'unmatched' && String(l.path).includes(`${id}_…`)).length, 2);
  const spellings = [secret, encode(secret)];
  t.deepEqual(
    srv.logs.filter((l) => spellings.some((s) => l.includes(s))),
    [],
  );
});

test('an expired link, a wrong secret and a link to a forgotten snapshot all answer the same 404', async (t) => {
  const f = await imageFixture();
  t.teardown(() => f.close());
  const url = (await share(f.env, [f.snapshot, '--expires', '1h'])).out.trim();
  const second = (await share(f.env, [f.snapshot, '--expires', '1h'])).out.trim();
  t.is((await fetch(url, { method: 'HEAD' })).status, 200);
  const wrong = url.replace(/_[0-9a-f]{64}\//, `_${'0'.repeat(64)}/`);
  const expectNotFound = async (u: string) => {
    const res = await fetch(u);
    t.is(res.status, 404, u);
    t.deepEqual(await res.json(), { code: 'NotFound', message: 'no such share link' });
  };
  await expectNotFound(wrong);
  await expectNotFound(`${f.server.url}/v1/share/nonsense/image`);
  // Time passes: the first link's expiry moves into the past (the server re-reads the file).
  const file = join(f.server.dataDir, 'shares.json');
  const doc = JSON.parse(await readFile(file, 'utf8')) as { shares: { expires: string }[] };
  doc.shares[0].expires = new Date(Date.now() - 1000).toISOString();
  await writeFile(file, JSON.stringify(doc));
  await expectNotFound(url);
  t.is((await fetch(second, { method: 'HEAD' })).status, 200);
  // Forgotten (and gc'd): the link fails cleanly instead of serving a broken image.
  const del = await fetch(`${f.server.url}/v1/snapshots/${f.snapshot}`, {
    method: 'DELETE',
    headers: { authorization: `Bearer ${f.server.adminToken}` },
  });
  t.is(del.status, 204);
  await expectNotFound(second);
});

test('who may create, list and revoke links; links survive a server restart', async (t) => {
  const dataDir = await mkdtemp(join(tmpdir(), 'dv-share-restart-'));
  t.teardown(() => rm(dataDir, { recursive: true, force: true }));
  const f = await imageFixture({ dataDir });
  t.teardown(() => f.close());
  const own = { ...f.env, DISKVAULT_TOKEN: await f.server.makeToken('agent', [f.host]) };
  const other = { ...f.env, DISKVAULT_TOKEN: await f.server.makeToken('agent', ['db1']) };
  const refused = await share(other, [f.snapshot, '--expires', '1h']);
  t.is(refused.code, 1);
  t.regex(refused.err, /not found/);
  const made = await share(own, [f.snapshot, '--expires', '1h', '--json']);
  t.is(made.code, 0, made.err);
  const link = JSON.parse(made.out) as { id: string; url: string };
  t.is((await share(other, ['--list', '--json'])).out.trim(), '[]');
  t.is((await share(other, ['--revoke', link.id])).code, 1);
  t.is(JSON.parse((await share(f.env, ['--list', '--json'])).out).length, 1);
  t.is((await share(own, [f.snapshot, '--expires', '31d'])).code, 1);
  t.is((await share(own, [f.snapshot])).code, 2);

  // The same data folder, a new server process: the link still serves the image.
  const port = new URL(f.server.url).port;
  await f.server.stop();
  const again = await startTestServer({ dataDir });
  t.teardown(() => again.stop());
  const url = link.url.replace(`:${port}/`, `:${new URL(again.url).port}/`);
  const res = await fetch(url);
  t.is(res.status, 200);
  t.true(Buffer.from(await res.arrayBuffer()).equals(f.image));
});
