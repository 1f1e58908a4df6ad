import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { holdChunks } from '../../agent/chunk-hold.js';
import { DiskvaultClient } from '../../agent/client.js';
import { call } from '../helpers/api-client.js';
import { backupNights } from '../helpers/backup-e2e.js';
import { DISKVAULT } from '../helpers/diskvault-command.js';
import { startTestServer } from '../helpers/server.js';

const MiB = 1024 * 1024;

/**
 * The hold a restore or an NBD export takes on the repository is an upload session kept alive: it must
 * outlive its lease while held, and be gone once released; and a restore under way must survive its
 * snapshot being forgotten and collected. (The same for an export is in test/nbd/nbd-e2e.test.ts.)
 */
test('a hold is renewed past its lease while held and ends when released; a refused hold only warns', async (t) => {
  const server = await startTestServer({ sessionLeaseMs: 3000 });
  t.teardown(() => server.stop());
  const client = new DiskvaultClient({ server: server.url, token: await server.makeToken('agent', ['h1']) });
  t.teardown(() => client.close());
  const warnings: string[] = [];
  const opened: string[] = [];
  const watched = {
    createSession: async (host: string, disk: string) => {
      const s = await client.createSession(host, disk);
      opened.push(s.id);
      return s;
    },
    missing: (id: string, ids: string[]) => client.missing(id, ids),
    abort: (id: string) => client.abort(id),
  };
  const hold = await holdChunks(watched, 'h1', 'sda', (m) => warnings.push(m));
  t.is(opened.length, 1);
  await new Promise((r) => setTimeout(r, 4500));
  // Past the 3 s lease: still open, because it was renewed.
  t.deepEqual(await client.missing(opened[0], []), []);
  await hold.release();
  await t.throwsAsync(client.missing(opened[0], []), { message: /session/i });
  t.deepEqual(warnings, []);

  // A token that may not open a session for this host: a warning, and a release that does nothing.
  const refused = await holdChunks(watched, 'other-host', 'sda', (m) => warnings.push(m));
  await refused.release();
  t.is(warnings.length, 1);
  t.regex(
    warnings[0],
    /could not keep gc from collecting this snapshot's chunks while it is read: .*other-host/,
  );
});

test('a restore under way survives its snapshot being forgotten and collected, and gc frees it afterwards', async (t) => {
  // No gc grace: only the restore's hold can keep the forgotten night's chunks.
  const server = await startTestServer({ gcGraceMs: 0, cacheBytes: 1 });
  t.teardown(() => server.stop());
  const dir = await mkdtemp(join(tmpdir(), 'dv-hold-restore-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const env = {
    DISKVAULT_SERVER: server.url,
    DISKVAULT_TOKEN: await server.makeToken('agent', ['h1']),
    DISKVAULT_CONFIG: '/nonexistent/agent.json',
  };
  // Two nights with nothing in common; the older is restored and forgotten midway.
  const older = randomBytes(24 * MiB);
  await writeFile(join(dir, 'night1.img'), older);
  await writeFile(join(dir, 'night2.img'), randomBytes(2 * MiB));
  const ids = await backupNights(
    env,
    ['night1.img', 'night2.img'].map((f) => join(dir, f)),
    'h1',
    'sda',
  );

  // To stdout, which the test does not read yet: the restore stalls on the full pipe with most of its
  // ~380 chunks still to download (it queues at most 4 per download slot ahead of the writer).
  const child = spawn(DISKVAULT, ['restore', ids[0], '-', '--concurrency', '2', '--json'], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  // A failed assertion must not leave the restore stalled on a pipe nobody reads.
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const exited = once(child, 'exit');
  await once(child.stdout, 'readable');

  const forget = await call(server.url, server.adminToken, 'POST', '/v1/forget', {
    json: { policy: { last: 1 }, host: 'h1', disk: 'sda', prune: true },
  });
  t.is(forget.status, 200, forget.bytes.toString());
  const forgot = JSON.parse(forget.bytes.toString());
  t.is(forgot.removed, 1);
  t.true(forgot.gc.chunksProtected > 0, 'the restore holds the forgotten chunks');

  const hash = createHash('sha256');
  for await (const piece of child.stdout) hash.update(piece as Buffer);
  const [code] = await exited;
  t.is(code, 0, stderr);
  t.is(hash.digest('hex'), createHash('sha256').update(older).digest('hex'));
  t.regex(stderr, /"type":"summary".*"verified":true/);

  // Released when the restore ended: gc now frees what only the forgotten night used.
  const gc = JSON.parse((await call(server.url, server.adminToken, 'POST', '/v1/gc')).bytes.toString());
  t.true(gc.report.chunksDeleted > 0, JSON.stringify(gc.report));
});
