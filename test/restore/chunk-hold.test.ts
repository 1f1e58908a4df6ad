import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { holdSnapshot } from '../../agent/chunk-hold.js';
import { DiskvaultClient } from '../../agent/client.js';
import { chunkOf, manifestFor, runJob } from '../helpers/api-client.js';
import { backupNights } from '../helpers/backup-e2e.js';
import { DISKVAULT } from '../helpers/diskvault-command.js';
import { startTestServer } from '../helpers/server.js';

const MiB = 1024 * 1024;

/**
 * The hold a restore or an NBD export takes on the repository is a snapshot lease: it must outlive its
 * length while held (renewed once per third, not per chunk), be gone once released, and need only read
 * rights; and a restore under way must survive its snapshot being forgotten and collected. (The same for an
 * export is in test/nbd/nbd-e2e.test.ts.)
 */
test('a hold is renewed past its lease while held and ends when released; a refused hold only warns', async (t) => {
  const server = await startTestServer({ sessionLeaseMs: 3000 });
  t.teardown(() => server.stop());
  const admin = new DiskvaultClient({ server: server.url, token: server.adminToken });
  t.teardown(() => admin.close());
  const snap = await commitTinySnapshot(admin, 'h1');
  const client = new DiskvaultClient({ server: server.url, token: await server.makeToken('agent', ['h1']) });
  t.teardown(() => client.close());
  const warnings: string[] = [];
  const taken: string[] = [];
  let renewals = 0;
  const watched = {
    takeLease: async (id: string) => {
      const l = await client.takeLease(id);
      taken.push(l.leaseId);
      return l;
    },
    renewLease: (id: string) => {
      renewals++;
      return client.renewLease(id);
    },
    releaseLease: (id: string) => client.releaseLease(id),
  };
  const hold = await holdSnapshot(watched, snap.id, (m) => warnings.push(m));
  t.is(taken.length, 1);
  const lease = taken[0] as string;
  t.is(server.repo.getLease(lease)?.snapshot, snap.id);
  await new Promise((r) => setTimeout(r, 4500));
  // Past the 3 s lease: still held, because it was renewed, once a second (a third of its length).
  t.is(server.repo.getLease(lease)?.snapshot, snap.id);
  t.true(renewals >= 3 && renewals <= 5, `renewed ${renewals} times in 4.5 s`);
  await hold.release();
  t.is(server.repo.getLease(lease), undefined);
  t.deepEqual(warnings, []);

  // An agent token of another host may not read the snapshot, so may not hold it: a warning, and a
  // release that does nothing.
  const other = new DiskvaultClient({ server: server.url, token: await server.makeToken('agent', ['h2']) });
  t.teardown(() => other.close());
  const refused = await holdSnapshot(other, snap.id, (m) => warnings.push(m));
  await refused.release();
  t.is(warnings.length, 1);
  t.regex(
    warnings[0] as string,
    /could not keep gc from collecting this snapshot's chunks while it is read: snapshot [0-9a-f]{64} not found/,
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

  const forget = await runJob(server.url, server.adminToken, '/v1/forget', {
    policy: { last: 1 },
    host: 'h1',
    disk: 'sda',
    prune: true,
  });
  t.is(forget.state, 'done', JSON.stringify(forget));
  const forgot = forget.result;
  t.is(forgot.removed, 1);
  // Held by the restore's lease and by nothing else (the backups' sessions are closed).
  const held = forgot.gc.chunksHeld;
  t.is(forgot.gc.chunksDeleted, 0);
  t.deepEqual(
    forgot.gc.holders.map((h: { kind: string; snapshot: string; chunks: number }) => [
      h.kind,
      h.snapshot,
      h.chunks,
    ]),
    [['lease', ids[0], held]],
  );

  const hash = createHash('sha256');
  for await (const piece of child.stdout) hash.update(piece as Buffer);
  const [code] = await exited;
  t.is(code, 0, stderr);
  t.is(hash.digest('hex'), createHash('sha256').update(older).digest('hex'));
  t.regex(stderr, /"type":"summary".*"verified":true/);

  // Released when the restore ended: gc now frees exactly what the lease held, and nothing holds it back.
  const gc = await runJob(server.url, server.adminToken, '/v1/gc');
  t.is(gc.result.chunksDeleted, held, JSON.stringify(gc.result));
  t.true(held >= 300, `the forgotten 24 MiB night had ${held} chunks of its own`);
  t.deepEqual(gc.result.holders, []);
});

/** A one-chunk snapshot of `host`/sda committed through the agent's client. */
async function commitTinySnapshot(client: DiskvaultClient, host: string) {
  const chunk = chunkOf(`tiny ${host}`, 1000);
  const session = await client.createSession(host, 'sda');
  await client.putChunk(session.id, chunk.id, chunk.data, 'raw');
  return client.commit(session.id, manifestFor(host, 'sda', [chunk]));
}
