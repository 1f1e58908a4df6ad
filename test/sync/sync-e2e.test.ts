import { randomBytes } from 'node:crypto';
import { copyFile, mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { call } from '../helpers/api-client.js';
import { backupNights, type CliRun, restoredHash, runCli, sha256File } from '../helpers/backup-e2e.js';
import { downloadsLoggedSince } from '../helpers/download-logs.js';
import { pollUntil } from '../helpers/poll.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { workload256M } from '../helpers/workload.js';

// diskvault sync between two real servers on 127.0.0.1 (local and S3 storage), with the real CLI and the
// 256M ext4 workload: a full pull with a reader token, a second pull that copies nothing, bit-exact restores
// and clean verifies on both sides, a pull killed with SIGKILL and run again, and a second machine cloned
// from the same golden image costing a sliver of the first.

interface SyncSummary {
  type: 'summary';
  snapshotsCopied: number;
  snapshotsPresent: number;
  snapshotsFailed: number;
  snapshotsVanished: number;
  snapshotsRemoved: number;
  chunksCopied: number;
  chunksPresent: number;
  bytesCopied: number;
  rawBytesCopied: number;
}

function summaryOf(r: CliRun): SyncSummary {
  const line = r.stdout.split('\n').find((l) => l.startsWith('{"type":"summary"'));
  if (!line) throw new Error(`sync printed no summary (exit ${r.code}):\n${r.stdout}\n${r.stderr}`);
  return JSON.parse(line) as SyncSummary;
}

/** A second machine cloned from night0: its own hostname, machine id, keys and logs in a few places. */
async function cloneOf(golden: string, dir: string): Promise<string> {
  const clone = join(dir, 'clone.img');
  await copyFile(golden, clone);
  const fh = await open(clone, 'r+');
  try {
    const size = (await fh.stat()).size;
    for (let i = 0; i < 8; i++) {
      const at = Math.floor(((i + 0.5) * size) / 8 / 4096) * 4096;
      await fh.write(randomBytes(64 * 1024), 0, 64 * 1024, at);
    }
  } finally {
    await fh.close();
  }
  return clone;
}

interface Primary {
  src: TestServer;
  ids: string[];
  /** Image file of each snapshot in ids. */
  images: string[];
  reader: string;
  /** Backup summaries' bytesUploaded: the golden machine's first night and the clone. */
  goldenSent: number;
  cloneSent: number;
  dir: string;
}

async function primary(storage: 'local' | 's3'): Promise<Primary> {
  const nights = await workload256M();
  const dir = await mkdtemp(join(tmpdir(), 'dv-sync-'));
  const src = await startTestServer({ storage });
  const env = { DISKVAULT_SERVER: src.url, DISKVAULT_TOKEN: await src.makeToken('agent', ['web1', 'web2']) };
  const first = await runCli(['backup', nights[0], '--host', 'web1', '--disk', 'sda', '--json'], env);
  if (first.code !== 0 || !first.summary) throw new Error(first.stderr);
  const later = await backupNights(env, nights.slice(1), 'web1', 'sda');
  const clone = await cloneOf(nights[0], dir);
  const cloned = await runCli(
    ['backup', clone, '--host', 'web2', '--disk', 'sda', '--tag', 'clone', '--json'],
    env,
  );
  if (cloned.code !== 0 || !cloned.summary) throw new Error(cloned.stderr);
  return {
    src,
    ids: [first.summary.snapshot, ...later, cloned.summary.snapshot],
    images: [...nights, clone],
    reader: await src.makeToken('reader'),
    goldenSent: first.summary.bytesUploaded,
    cloneSent: cloned.summary.bytesUploaded,
    dir,
  };
}

const syncArgs = (p: Primary, extra: string[] = []) => [
  'sync',
  '--from',
  p.src.url,
  '--from-token',
  p.reader,
  '--json',
  ...extra,
];

const publicView = (list: Record<string, unknown>[]) =>
  list.map(({ id, host, disk, time, size, sha256, chunkCount, tags, unreadable, sourceFormat, tenant }) => ({
    id,
    host,
    disk,
    time,
    size,
    sha256,
    chunkCount,
    tags,
    unreadable,
    sourceFormat,
    tenant,
  }));

async function verifyClean(
  server: TestServer,
): Promise<{ ok: boolean; snapshotsChecked: number; problems: unknown[] }> {
  const r = await runCli(['verify', '--read-data', '--json'], {
    DISKVAULT_SERVER: server.url,
    DISKVAULT_TOKEN: server.adminToken,
  });
  return JSON.parse(r.stdout);
}

async function settledChunkCount(server: TestServer): Promise<number> {
  const deadline = Date.now() + 30_000;
  let last = server.repo.stats().uniqueChunks;
  for (;;) {
    await new Promise((r) => setTimeout(r, 250));
    const now = server.repo.stats().uniqueChunks;
    if (now === last || Date.now() > deadline) return now;
    last = now;
  }
}

for (const storage of ['local', 's3'] as const) {
  test.serial(
    `[${storage}] a destination pulls every snapshot with a reader token; a second pull copies nothing`,
    async (t) => {
      t.timeout(20 * 60_000);
      const p = await primary(storage);
      const dst = await startTestServer({ storage });
      try {
        // The golden-image clone cost a sliver of its first backup.
        t.true(p.cloneSent < 0.05 * p.goldenSent, `clone sent ${p.cloneSent} of ${p.goldenSent}`);
        t.log(`backup: golden night0 sent ${p.goldenSent} bytes, the clone ${p.cloneSent}`);

        const env = { DISKVAULT_SERVER: dst.url, DISKVAULT_TOKEN: dst.adminToken };
        const [srcLogsBefore, dstLogsBefore] = [p.src.logs.length, dst.logs.length];
        const first = await runCli(syncArgs(p), env);
        t.is(first.code, 0, first.stderr);
        const s1 = summaryOf(first);
        const source = p.src.repo.stats();
        t.is(s1.snapshotsCopied, 5);
        t.is(s1.snapshotsPresent, 0);
        t.is(s1.snapshotsFailed, 0);
        // Every distinct chunk of the source crossed exactly once.
        t.is(s1.chunksCopied, source.uniqueChunks);
        t.is(s1.rawBytesCopied, source.rawBytes);
        t.is(dst.repo.stats().uniqueChunks, source.uniqueChunks);
        t.log(`sync 1: ${JSON.stringify(s1)}`);
        // Downloaded over one fetch stream, uploaded over one chunk stream per snapshot: no chunk went as a
        // request of its own either way.
        const downloads = await downloadsLoggedSince(p.src, srcLogsBefore);
        t.is(downloads.streams.length, 1, JSON.stringify(downloads.streams));
        t.is(downloads.streams[0].chunks, s1.chunksCopied);
        t.is(downloads.gets.length, 0);
        // Each stream is logged as the server sees it close, a moment after the agent's side ends.
        const uploadLines = () =>
          dst.logs.slice(dstLogsBefore).filter((l) => l.includes('"msg":"chunk stream"'));
        await pollUntil(
          () => uploadLines().length,
          (n) => n >= 5,
          'five chunk streams to be logged',
        );
        const dstLogs = dst.logs.slice(dstLogsBefore);
        const uploads = uploadLines().map((l) => JSON.parse(l));
        t.is(uploads.length, 5, dstLogs.join('\n'));
        t.is(
          uploads.reduce((n: number, u: { chunks: number }) => n + u.chunks, 0),
          s1.chunksCopied,
        );
        t.is(dstLogs.filter((l) => l.includes('"route":"/v1/chunks/:id"')).length, 0);

        // Snapshot lines: oldest first, the clone's copy cost a sliver of the golden night's.
        const events = first.stdout
          .split('\n')
          .filter((l) => l.startsWith('{"type":"snapshot"'))
          .map((l) => JSON.parse(l) as { id: string; action: string; bytesCopied: number });
        t.deepEqual(
          events.map((e) => [e.id, e.action]),
          p.ids.map((id) => [id, 'copied']),
        );
        const goldenCopy = events[0].bytesCopied;
        const cloneCopy = events[4].bytesCopied;
        t.true(cloneCopy < 0.05 * goldenCopy, `clone copy ${cloneCopy} of ${goldenCopy}`);

        // Same ids, times, hosts, disks, tags, hashes, unreadable ranges.
        const srcList = (await call(p.src.url, p.src.adminToken, 'GET', '/v1/snapshots')).json.snapshots;
        const dstList = (await call(dst.url, dst.adminToken, 'GET', '/v1/snapshots')).json.snapshots;
        t.deepEqual(publicView(dstList), publicView(srcList));
        t.deepEqual(dstList.find((s: { id: string }) => s.id === p.ids[4]).tags, ['clone']);

        const second = await runCli(syncArgs(p), env);
        t.is(second.code, 0, second.stderr);
        const s2 = summaryOf(second);
        t.is(s2.snapshotsCopied, 0);
        t.is(s2.snapshotsPresent, 5);
        t.is(s2.chunksCopied, 0);
        t.is(s2.bytesCopied, 0);
        t.log(`sync 2: ${JSON.stringify(s2)}`);

        // Restores from the copy are bit-exact; verify --read-data is clean on both sides.
        for (const i of [3, 4]) t.is(await restoredHash(dst, p.ids[i], p.dir), await sha256File(p.images[i]));
        for (const side of [p.src, dst]) {
          const v = await verifyClean(side);
          t.true(v.ok);
          t.is(v.snapshotsChecked, 5);
          t.deepEqual(v.problems, []);
        }

        // Forgotten on the source: kept on the copy, unless --remove-vanished (which spares protected ones).
        const srcEnv = { DISKVAULT_SERVER: p.src.url, DISKVAULT_TOKEN: p.src.adminToken };
        t.is((await runCli(['forget', p.ids[0], p.ids[1]], srcEnv)).code, 0);
        const kept = summaryOf(await runCli(syncArgs(p), env));
        t.is(kept.snapshotsVanished, 2);
        t.is(kept.snapshotsRemoved, 0);
        t.is(dst.repo.listSnapshots().length, 5);
        t.is((await runCli(['protect', p.ids[0]], env)).code, 0);
        const pruned = await runCli(syncArgs(p, ['--remove-vanished']), env);
        t.is(pruned.code, 0, pruned.stderr);
        const s3 = summaryOf(pruned);
        t.is(s3.snapshotsRemoved, 1);
        t.regex(pruned.stdout, new RegExp(`"action":"kept","reason":"protected","id":"${p.ids[0]}"`));
        t.deepEqual(
          dst.repo
            .listSnapshots()
            .map((s) => s.id)
            .sort(),
          [p.ids[0], p.ids[2], p.ids[3], p.ids[4]].sort(),
        );
      } finally {
        await dst.stop();
        await p.src.stop();
        await rm(p.dir, { recursive: true, force: true });
      }
    },
  );

  test.serial(
    `[${storage}] a sync killed with SIGKILL midway finishes when run again, copying nothing twice`,
    async (t) => {
      t.timeout(20 * 60_000);
      const p = await primary(storage);
      const dst = await startTestServer({ storage });
      try {
        const env = { DISKVAULT_SERVER: dst.url, DISKVAULT_TOKEN: dst.adminToken };
        const total = p.src.repo.stats();
        // Paced so the kill lands mid-transfer: once a third of the chunks have crossed.
        let killedAt = 0;
        const killed = await runCli(syncArgs(p, ['--limit-upload', '40M']), env, {
          onStderr: (text, kill) => {
            if (killedAt) return;
            const lines = text.split('\n').filter((l) => l.startsWith('{"type":"progress"'));
            const last = lines.length
              ? (JSON.parse(lines[lines.length - 1]) as { chunksCopied: number })
              : null;
            if (last && last.chunksCopied >= total.uniqueChunks / 3) {
              killedAt = last.chunksCopied;
              kill();
            }
          },
        });
        t.is(killed.code, null, 'the first sync was killed');
        t.true(killedAt > 0);
        // An upload whose body had fully arrived may still be landing: wait until the count holds still.
        const held = await settledChunkCount(dst);
        const committed = dst.repo.listSnapshots().length;
        t.true(held >= killedAt && held < total.uniqueChunks, `held ${held} of ${total.uniqueChunks}`);
        t.true(committed < 5);
        t.log(`killed after ${killedAt} chunks; destination held ${held} chunks and ${committed} snapshots`);

        const again = await runCli(syncArgs(p), env);
        t.is(again.code, 0, again.stderr);
        const s = summaryOf(again);
        // Exactly what the killed run had not stored crossed now: nothing twice.
        t.is(s.chunksCopied, total.uniqueChunks - held);
        t.is(s.snapshotsCopied + s.snapshotsPresent, 5);
        t.is(s.snapshotsCopied, 5 - committed);
        t.is(dst.repo.stats().uniqueChunks, total.uniqueChunks);
        const third = summaryOf(await runCli(syncArgs(p), env));
        t.is(third.chunksCopied, 0);
        t.is(third.snapshotsCopied, 0);

        for (const i of [0, 3]) t.is(await restoredHash(dst, p.ids[i], p.dir), await sha256File(p.images[i]));
        const v = await verifyClean(dst);
        t.true(v.ok);
        t.is(v.snapshotsChecked, 5);
      } finally {
        await dst.stop();
        await p.src.stop();
        await rm(p.dir, { recursive: true, force: true });
      }
    },
  );
}
