import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { DiskvaultClient } from '../../agent/client.js';
import { backupNights, restoredHash, runCli, sha256File } from '../helpers/backup-e2e.js';
import { pollUntil, pollUntilSteady } from '../helpers/poll.js';
import { type RunningCli, startCli } from '../helpers/running-cli.js';
import { startTestServer, type TestServer } from '../helpers/server.js';

// Ctrl-C in the middle of a real `diskvault sync` between two real servers: the snapshot being copied is not
// committed, the destination holds only whole snapshots, one line (and with --json the summary) says how far
// it got, exit 130; run again, it copies the rest and nothing twice.

const MiB = 1024 * 1024;
/** Distinct random images: nothing dedups between them, so each snapshot costs its whole size to copy. */
const SNAPSHOTS = 3;
const IMAGE_BYTES = 6 * MiB;
/** --limit-download for the interrupted run: about 3 s a snapshot, so Ctrl-C lands inside the second one. */
const SLOW = '2M';

interface SyncSummary {
  type: 'summary';
  snapshotsCopied: number;
  snapshotsPresent: number;
  snapshotsFailed: number;
  chunksCopied: number;
  failures: unknown[];
  interrupted: boolean;
}

function summaryOf(stdout: string): SyncSummary | undefined {
  const line = stdout.split('\n').find((l) => l.startsWith('{"type":"summary"'));
  return line ? (JSON.parse(line) as SyncSummary) : undefined;
}

/** Ids of the snapshots a sync said it copied, from its stdout (JSON events, or the lines for people). */
function copiedIds(stdout: string, json: boolean, all: string[]): string[] {
  const lines = stdout.split('\n');
  if (json)
    return lines
      .filter((l) => l.startsWith('{"type":"snapshot"'))
      .map((l) => JSON.parse(l) as { action: string; id: string })
      .filter((e) => e.action === 'copied')
      .map((e) => e.id);
  return lines
    .filter((l) => l.startsWith('copied '))
    .map((l) => {
      const prefix = l.split(/\s+/)[1] as string;
      return all.find((id) => id.startsWith(prefix)) ?? prefix;
    });
}

async function listIds(server: TestServer): Promise<string[]> {
  const client = new DiskvaultClient({ server: server.url, token: server.adminToken });
  try {
    return (await client.listSnapshots()).map((s) => s.id).sort();
  } finally {
    client.close();
  }
}

async function verifyReadData(server: TestServer): Promise<{ ok: boolean; snapshotsChecked: number }> {
  const r = await runCli(['verify', '--read-data', '--json'], {
    DISKVAULT_SERVER: server.url,
    DISKVAULT_TOKEN: server.adminToken,
  });
  return JSON.parse(r.stdout);
}

interface Primary {
  dir: string;
  src: TestServer;
  /** Snapshot ids, oldest first. */
  ids: string[];
  imageOf: Map<string, string>;
  /** Chunks of each snapshot: all distinct, in the repository once. */
  chunkCount: Map<string, number>;
  reader: string;
}

/** A source server holding SNAPSHOTS backups of distinct random images, and a reader token of it. */
async function primary(): Promise<Primary> {
  const dir = await mkdtemp(join(tmpdir(), 'dv-sync-int-'));
  const src = await startTestServer({ storage: 'local' });
  try {
    const images: string[] = [];
    for (let i = 0; i < SNAPSHOTS; i++) {
      const image = join(dir, `night${i}.img`);
      await writeFile(image, randomBytes(IMAGE_BYTES));
      images.push(image);
    }
    const agentEnv = { DISKVAULT_SERVER: src.url, DISKVAULT_TOKEN: await src.makeToken('agent', ['h']) };
    const ids = await backupNights(agentEnv, images, 'h', 'd');
    const imageOf = new Map(ids.map((id, i) => [id, images[i] as string]));
    const listed = new DiskvaultClient({ server: src.url, token: src.adminToken });
    const chunkCount = new Map((await listed.listSnapshots()).map((s) => [s.id, s.chunkCount]));
    listed.close();
    return { dir, src, ids, imageOf, chunkCount, reader: await src.makeToken('reader') };
  } catch (err) {
    await src.stop();
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

/**
 * Waits until the sync has committed its first snapshot and chunks of the second are landing on the
 * destination: its upload session is open and, at the --limit-download pace, seconds of copying are left.
 */
async function secondSnapshotUnderway(run: RunningCli, json: boolean, p: Primary, dst: TestServer) {
  const [first] = await pollUntil(
    () => copiedIds(run.stdout(), json, p.ids),
    (copied) => copied.length >= 1,
    'the first snapshot copied',
    { timeoutMs: 60_000 },
  );
  const firstChunks = p.chunkCount.get(first as string) as number;
  await pollUntil(
    () => dst.repo.stats().uniqueChunks,
    (n) => n > firstChunks,
    'chunks of the second snapshot on the destination',
  );
}

for (const json of [true, false]) {
  test.serial(
    `Ctrl-C during a rate-limited sync${json ? ' --json' : ''} commits only whole snapshots, exits 130; run again, it copies the rest once`,
    async (t) => {
      t.timeout(5 * 60_000);
      const p = await primary();
      const { dir, src, ids, imageOf, reader } = p;
      const dst = await startTestServer({ storage: 'local' });
      try {
        const sourceChunks = src.repo.stats().uniqueChunks;
        const env = { DISKVAULT_SERVER: dst.url, DISKVAULT_TOKEN: dst.adminToken };
        const syncArgs = ['sync', '--from', src.url, '--from-token', reader];

        const run = startCli([...syncArgs, ...(json ? ['--json'] : []), '--limit-download', SLOW], env);
        await secondSnapshotUnderway(run, json, p, dst);
        const interruptedAt = performance.now();
        run.child.kill('SIGINT');
        const { code, signal } = await run.exit;
        t.log(`exited ${Math.round(performance.now() - interruptedAt)} ms after SIGINT`);
        t.is(signal, null, `killed by ${signal}: SIGINT was not handled`);
        t.is(code, 130, run.stderr());

        const forPeople = run
          .stderr()
          .split('\n')
          .filter((l) => l !== '' && !l.startsWith('{'));
        t.is(forPeople.length, 1, run.stderr());
        t.is(forPeople[0], 'diskvault sync: interrupted: 1 of 3 snapshots copied; run sync again to finish');
        t.false(run.stderr().includes('    at '), 'no stack trace');
        const summary = summaryOf(run.stdout());
        if (json) {
          t.like(summary, { interrupted: true, snapshotsCopied: 1, snapshotsFailed: 0, failures: [] });
        } else {
          t.is(summary, undefined);
          t.false(run.stdout().includes('sync from '), 'no summary for people after Ctrl-C');
        }

        // Only whole snapshots: the one copied, restorable bit for bit; verify reads every chunk cleanly.
        const copied = copiedIds(run.stdout(), json, ids);
        t.is(copied.length, 1);
        t.deepEqual(await listIds(dst), copied);
        t.is(await restoredHash(dst, copied[0] as string, dir), await sha256File(imageOf.get(copied[0]!)!));
        t.like(await verifyReadData(dst), { ok: true, snapshotsChecked: 1 });
        // The session of the snapshot cut off was ended, not left to expire.
        t.is(dst.logs.filter((l) => /"method":"DELETE"/.test(l) && /\/v1\/sessions\//.test(l)).length, 1);
        // An upload whose body had fully arrived may still be landing: count once the number holds still.
        const held = await pollUntilSteady(() => dst.repo.stats().uniqueChunks, 'destination chunks');
        t.true(held < sourceChunks, `held ${held} of ${sourceChunks}`);

        const again = await runCli([...syncArgs, '--json'], env);
        t.is(again.code, 0, again.stderr);
        t.like(summaryOf(again.stdout), {
          interrupted: false,
          snapshotsCopied: 2,
          snapshotsPresent: 1,
          snapshotsFailed: 0,
          // Nothing twice: exactly the chunks the interrupted run had not stored crossed now.
          chunksCopied: sourceChunks - held,
        });
        t.deepEqual(await listIds(dst), [...ids].sort());
        t.is(dst.repo.stats().uniqueChunks, sourceChunks);
        t.like(await verifyReadData(dst), { ok: true, snapshotsChecked: SNAPSHOTS });
      } finally {
        await dst.stop();
        await src.stop();
        await rm(dir, { recursive: true, force: true });
      }
    },
  );
}

/**
 * A TCP pass-through to `target` that, once frozen, forwards nothing more either way and keeps what the
 * client sends: a server that stopped answering, with the requests that reached it visible to the test.
 */
async function freezingProxy(target: string) {
  const u = new URL(target);
  let frozen = false;
  let heldBack = '';
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(u.port), u.hostname);
    for (const s of [client, upstream]) sockets.add(s);
    client.on('data', (d: Buffer) => {
      if (frozen) heldBack += d.toString('latin1');
      else upstream.write(d);
    });
    upstream.on('data', (d: Buffer) => {
      if (!frozen) client.write(d);
    });
    const end = () => {
      for (const s of [client, upstream]) {
        s.destroy();
        sockets.delete(s);
      }
    };
    for (const s of [client, upstream]) s.on('close', end).on('error', end);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    freeze() {
      frozen = true;
    },
    /** What clients sent since the freeze. */
    heldBack: () => heldBack,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

test.serial(
  'a second Ctrl-C ends a sync at once while its wind-down waits on a destination that stopped answering',
  async (t) => {
    t.timeout(5 * 60_000);
    const p = await primary();
    const { dir, src, ids, reader } = p;
    const dst = await startTestServer({ storage: 'local' });
    const proxy = await freezingProxy(dst.url);
    try {
      const env = { DISKVAULT_SERVER: proxy.url, DISKVAULT_TOKEN: dst.adminToken };
      const run = startCli(
        ['sync', '--from', src.url, '--from-token', reader, '--json', '--limit-download', SLOW],
        env,
      );
      await secondSnapshotUnderway(run, true, p, dst);
      proxy.freeze();
      run.child.kill('SIGINT');
      // The first Ctrl-C's clean-up, aborting the upload session, now waits on a destination that never answers.
      await pollUntil(
        () => /DELETE \/v1\/sessions\//.test(proxy.heldBack()),
        (seen) => seen,
        'the session abort sent after the first Ctrl-C',
      );
      const second = performance.now();
      run.child.kill('SIGINT');
      const { code, signal } = await run.exit;
      t.log(`exited ${Math.round(performance.now() - second)} ms after the second SIGINT`);
      t.is(signal, null);
      t.is(code, 130);
      t.false(run.stderr().includes('interrupted:'), 'ended at once, not after the wind-down');
      t.false(run.stderr().includes('    at '), 'no stack trace');
      t.is(summaryOf(run.stdout()), undefined);
      // Nothing half-made on the destination: the snapshot copied whole, and only it.
      t.deepEqual(await listIds(dst), copiedIds(run.stdout(), true, ids));
    } finally {
      await proxy.close();
      await dst.stop();
      await src.stop();
      await rm(dir, { recursive: true, force: true });
    }
  },
);
