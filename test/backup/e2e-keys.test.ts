import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import test from 'ava';
import { DiskvaultClient } from '../../agent/client.js';
import type { Repository } from '../../repo-engine/repository.js';
import { domainChunkId } from '../../repo-engine/sealed-chunk.js';
import { call } from '../helpers/api-client.js';
import { readSnapshot } from '../helpers/backup-e2e.js';
import { downloadsLoggedSince } from '../helpers/download-logs.js';
import {
  backupCli,
  type Conn,
  dv,
  removeDir,
  sha256File,
  summaryOf,
  tempDir,
} from '../helpers/reliability-harness.js';
import { startTestServer, type TestServer } from '../helpers/server.js';

/**
 * End-to-end keys with the real server (over HTTP) and the real agent (the CLI as a child), on local
 * storage and S3. The repositories here are made WITHOUT at-rest encryption, so whatever storage holds is
 * what the agent sent: only the agent's sealing keeps the marker and the chunk hashes out of it.
 */

const MARKER = 'DISKVAULT-E2E-MARKER-9b2f7d';

async function writeMarkedImage(
  dir: string,
  name = 'marked.img',
): Promise<{ file: string; sha256: string; bytes: Buffer }> {
  const marked = Buffer.from(`${MARKER} `.repeat(Math.ceil((512 * 1024) / (MARKER.length + 1)))).subarray(
    0,
    512 * 1024,
  );
  const bytes = Buffer.concat([marked, randomBytes(1024 * 1024), marked.subarray(0, 256 * 1024)]);
  const file = path.join(dir, name);
  await writeFile(file, bytes);
  return { file, sha256: await sha256File(file), bytes };
}

async function makeKey(dir: string, name: string, passphrase: string): Promise<{ key: string; pw: string }> {
  const pw = path.join(dir, `${name}.pw`);
  await writeFile(pw, `${passphrase}\n`);
  const key = path.join(dir, `${name}.key`);
  const r = await dv(['key', 'create', '--out', key, '--password-file', pw], { server: '', token: '' });
  if (r.code !== 0) throw new Error(`key create failed: ${r.stderr}`);
  return { key, pw };
}

async function storedObjects(srv: TestServer): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  for await (const e of srv.storage.list('')) out.set(e.key, await srv.storage.getBytes(e.key));
  return out;
}

async function manifestEntries(conn: Conn, snapshot: string) {
  const client = new DiskvaultClient({ server: conn.server, token: conn.token });
  try {
    return (await readSnapshot(client, snapshot)).entries;
  } finally {
    client.close();
  }
}

for (const storage of ['local', 's3'] as const) {
  test(`[${storage}] end to end: storage holds no marker and no plain chunk hash; bit-exact restore; no key, a wrong passphrase or another key stop the restore before it writes; a flipped byte is named; admin work needs no key`, async (t) => {
    const work = await tempDir('e2e');
    const srv = await startTestServer({ storage, cacheBytes: 0, encryption: 'none' });
    try {
      const conn = { server: srv.url, token: srv.adminToken };
      const image = await writeMarkedImage(work);
      const { key, pw } = await makeKey(work, 'a', 'correct horse battery');
      const run = await backupCli(conn, image.file, 'h1', 'sda', ['--key', key, '--password-file', pw]);
      t.is(run.code, 0, run.stderr);
      const snapshot = summaryOf(run).snapshot;

      // The chunks' plain SHA-256 values, from the manifest's lengths over the image.
      const entries = await manifestEntries(conn, snapshot);
      let at = 0;
      const plainIds = entries.map((e) => {
        const id = createHash('sha256')
          .update(image.bytes.subarray(at, at + e.length))
          .digest('hex');
        at += e.length;
        return id;
      });
      t.is(at, image.bytes.length);
      const objects = await storedObjects(srv);
      const chunkObjects = [...objects.keys()].filter((k) => k.startsWith('chunks/'));
      t.is(chunkObjects.length, new Set(entries.map((e) => e.id)).size);
      for (const [objectKey, bytes] of objects) {
        t.false(bytes.includes(MARKER), `${objectKey} holds the marker`);
        t.false(bytes.includes(image.sha256), `${objectKey} holds the image's SHA-256`);
        for (const id of plainIds) {
          t.false(objectKey.includes(id), `${objectKey} names a chunk's plain SHA-256`);
          t.false(bytes.includes(Buffer.from(id, 'hex')), `${objectKey} holds a chunk's plain SHA-256`);
        }
      }
      // Nor can the ids be computed from content and the public key id alone (they are keyed).
      const keyIdBytes = Buffer.from(
        JSON.parse((await dv(['snapshots', '--json'], conn)).stdout)[0].e2e.keyId,
        'hex',
      );
      const unkeyed = plainIds.map((id) => domainChunkId(keyIdBytes, Buffer.from(id, 'hex')).toString('hex'));
      for (const e of entries) {
        t.false(plainIds.includes(e.id));
        t.false(unkeyed.includes(e.id));
      }

      // Listing without the key: the key id, no image hash. With it: the hash, opened by the agent.
      const listed = await dv(['snapshots', '--json'], conn);
      t.is(listed.code, 0, listed.stderr);
      const info = JSON.parse(listed.stdout)[0];
      t.is(info.sha256, '');
      t.regex(info.e2e.keyId, /^[0-9a-f]{32}$/);
      const opened = await dv(['snapshots', '--json', '--key', key, '--password-file', pw], conn);
      t.is(opened.code, 0, opened.stderr);
      t.is(JSON.parse(opened.stdout)[0].sha256, image.sha256);

      const restored = path.join(work, 'restored.img');
      const ok = await dv(
        ['restore', snapshot, restored, '--json', '--key', key, '--password-file', pw],
        conn,
      );
      t.is(ok.code, 0, ok.stderr);
      t.is(await sha256File(restored), image.sha256);
      // In place over the restored copy: every chunk is recognised by its keyed id and nothing is fetched.
      const again = await dv(
        ['restore', snapshot, restored, '--in-place', '--json', '--key', key, '--password-file', pw],
        conn,
      );
      t.is(again.code, 0, again.stderr);
      const inPlace = summaryOf(again);
      t.is(inPlace.chunksReused, entries.length);
      t.is(inPlace.chunksFetched, 0);

      // Without the key, with a wrong passphrase, with another key: one line, exit 1, target never written.
      const target = path.join(work, 'never.img');
      const noKey = await dv(['restore', snapshot, target], conn);
      t.is(noKey.code, 1);
      t.is(noKey.stderr.trim().split('\n').length, 1, noKey.stderr);
      t.regex(
        noKey.stderr,
        new RegExp(`encrypted end to end with key ${info.e2e.keyId}: give its key file with --key`),
      );
      const badPw = path.join(work, 'bad.pw');
      await writeFile(badPw, 'not the passphrase\n');
      const wrong = await dv(['restore', snapshot, target, '--key', key, '--password-file', badPw], conn);
      t.is(wrong.code, 1);
      t.regex(
        wrong.stderr,
        new RegExp(`wrong passphrase for the key file ${key.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`),
      );
      const other = await makeKey(work, 'b', 'another passphrase');
      const otherKey = await dv(
        ['restore', snapshot, target, '--key', other.key, '--password-file', other.pw],
        conn,
      );
      t.is(otherKey.code, 1);
      t.regex(otherKey.stderr, new RegExp(`encrypted with key ${info.e2e.keyId}; the key file`));
      t.false(existsSync(target));

      // The image route cannot serve it.
      const imageAnswer = await call(srv.url, srv.adminToken, 'GET', `/v1/snapshots/${snapshot}/image`);
      t.is(imageAnswer.status, 409);
      t.is(imageAnswer.json.details.reason, 'end-to-end');

      // Admin work without any key: verify (reading every object), stats.
      const verify = await dv(['verify', '--read-data', '--json'], conn);
      t.is(verify.code, 0, verify.stderr);
      t.true(JSON.parse(verify.stdout).ok);
      const stats = await dv(['stats', '--json'], conn);
      t.is(stats.code, 0, stats.stderr);

      // The agent's own verify with the key: every chunk opened once, nothing wrong yet, and every one
      // downloaded over a single fetch stream rather than a request each.
      const logsBefore = srv.logs.length;
      const clean = await dv(['verify', '--key', key, '--password-file', pw, '--read-data', '--json'], conn);
      t.is(clean.code, 0, clean.stderr);
      const cleanReport = JSON.parse(clean.stdout);
      t.true(cleanReport.ok);
      t.is(cleanReport.snapshotsChecked, 1);
      t.is(cleanReport.chunksChecked, new Set(entries.map((e) => e.id)).size);
      const { streams, gets } = await downloadsLoggedSince(srv, logsBefore);
      t.is(streams.length, 1, JSON.stringify(streams));
      t.is(streams[0]!.chunks, cleanReport.chunksChecked);
      t.is(gets.length, 0, gets.join('\n'));

      // A flipped byte in a stored chunk's ciphertext: the server cannot see it, the agent names the chunk.
      const victim = entries[Math.floor(entries.length / 2)]?.id as string;
      const victimKey = (srv.repo as Repository).storedObjects.chunkKey(victim);
      const original = objects.get(victimKey) as Buffer;
      const changed = Buffer.from(original);
      changed[changed.length - 40] ^= 0x01;
      await srv.storage.put(victimKey, changed);
      const bad = await dv(
        ['restore', snapshot, path.join(work, 'bad.img'), '--key', key, '--password-file', pw],
        conn,
      );
      t.is(bad.code, 1);
      t.regex(bad.stderr, new RegExp(`chunk ${victim} is corrupt: its authentication tag does not match`));
      // Reported back: the server cannot judge a sealed chunk, so it takes its key holder's word for it.
      t.regex(bad.stderr, /its authentication tag does not match .*; the server has marked its copy damaged/);
      const agentVerify = await dv(
        ['verify', '--key', key, '--password-file', pw, '--read-data', '--json'],
        conn,
      );
      t.is(agentVerify.code, 1, agentVerify.stderr);
      const report = JSON.parse(agentVerify.stdout);
      t.deepEqual(
        report.problems.map((p: { chunk: string; snapshots: string[] }) => [p.chunk, p.snapshots]),
        [[victim, [snapshot]]],
      );
      t.regex(report.problems[0].detail, /authentication tag/);
      t.deepEqual(report.reported, [{ id: victim, status: 'damaged' }]);

      // So the next backup with the key uploads the chunk again (without the report it would upload
      // nothing: every chunk is stored), and the snapshot restores bit for bit.
      const heal = await backupCli(conn, image.file, 'h1', 'sda', ['--key', key, '--password-file', pw]);
      t.is(heal.code, 0, heal.stderr);
      t.true((summaryOf(heal).bytesUploaded as number) > 0, heal.stdout);
      const healed = path.join(work, 'healed.img');
      const healedRun = await dv(['restore', snapshot, healed, '--key', key, '--password-file', pw], conn);
      t.is(healedRun.code, 0, healedRun.stderr);
      t.is(await sha256File(healed), image.sha256);
      const cleanAgain = await dv(
        ['verify', '--key', key, '--password-file', pw, '--read-data', '--json'],
        conn,
      );
      t.is(cleanAgain.code, 0, cleanAgain.stderr);
      t.deepEqual(JSON.parse(cleanAgain.stdout).reported, []);
    } finally {
      await srv.stop();
      await removeDir(work);
    }
  });

  test(`[${storage}] end to end: two agents with one key dedup a shared image (the second uploads under 5%); an agent with another key dedups nothing`, async (t) => {
    const work = await tempDir('e2e-dedup');
    const srv = await startTestServer({ storage });
    try {
      const conn = { server: srv.url, token: srv.adminToken };
      const image = await writeMarkedImage(work, 'golden.img');
      const shared = await makeKey(work, 'shared', 'one key for the fleet');
      const other = await makeKey(work, 'other', 'another fleet');
      const withKey = (k: { key: string; pw: string }) => ['--key', k.key, '--password-file', k.pw];

      const first = await backupCli(conn, image.file, 'web1', 'sda', withKey(shared));
      t.is(first.code, 0, first.stderr);
      const firstBytes = summaryOf(first).bytesUploaded as number;
      t.true(firstBytes > image.bytes.length / 2, `first upload ${firstBytes}`);

      const second = await backupCli(conn, image.file, 'web2', 'sda', withKey(shared));
      t.is(second.code, 0, second.stderr);
      t.true(
        (summaryOf(second).bytesUploaded as number) < firstBytes * 0.05,
        `second upload ${summaryOf(second).bytesUploaded}`,
      );

      const third = await backupCli(conn, image.file, 'web3', 'sda', withKey(other));
      t.is(third.code, 0, third.stderr);
      t.true(
        (summaryOf(third).bytesUploaded as number) >= firstBytes * 0.95,
        `other key upload ${summaryOf(third).bytesUploaded}`,
      );

      // A plaintext agent shares nothing with them either, and each restores bit for bit.
      const plain = await backupCli(conn, image.file, 'web4', 'sda');
      t.is(plain.code, 0, plain.stderr);
      t.true((summaryOf(plain).bytesUploaded as number) >= firstBytes * 0.95);
      const restored = path.join(work, 'web3.img');
      const r = await dv(['restore', summaryOf(third).snapshot, restored, ...withKey(other)], conn);
      t.is(r.code, 0, r.stderr);
      t.is(await sha256File(restored), image.sha256);
    } finally {
      await srv.stop();
      await removeDir(work);
    }
  });
}

test('sync copies an end-to-end snapshot sealed, with no key on either server, and it restores from the copy with the key', async (t) => {
  const work = await tempDir('e2e-sync');
  const src = await startTestServer();
  const dst = await startTestServer();
  try {
    const image = await writeMarkedImage(work);
    const { key, pw } = await makeKey(work, 'k', 'offsite passphrase');
    const srcConn = { server: src.url, token: src.adminToken };
    const dstConn = { server: dst.url, token: dst.adminToken };
    const run = await backupCli(srcConn, image.file, 'h1', 'sda', ['--key', key, '--password-file', pw]);
    t.is(run.code, 0, run.stderr);
    const snapshot = summaryOf(run).snapshot;
    const synced = await dv(['sync', '--from', src.url, '--from-token', src.adminToken, '--json'], dstConn);
    t.is(synced.code, 0, synced.stderr);
    const copy = dst.repo.getSnapshot(snapshot);
    t.deepEqual(copy?.e2e, src.repo.getSnapshot(snapshot)?.e2e);
    const restored = path.join(work, 'copy.img');
    const r = await dv(['restore', snapshot, restored, '--key', key, '--password-file', pw], dstConn);
    t.is(r.code, 0, r.stderr);
    t.is(await sha256File(restored), image.sha256);
  } finally {
    await src.stop();
    await dst.stop();
    await removeDir(work);
  }
});
