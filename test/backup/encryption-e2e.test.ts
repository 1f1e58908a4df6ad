import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import test from 'ava';
import { DiskvaultClient } from '../../agent/client.js';
import { readSnapshot, runCli } from '../helpers/backup-e2e.js';
import { DISKVAULT } from '../helpers/diskvault-command.js';
import {
  backupCli,
  type Conn,
  dv,
  removeDir,
  sha256File,
  summaryOf,
  tempDir,
  verifyCli,
} from '../helpers/reliability-harness.js';
import { startTestServer, type TestServer } from '../helpers/server.js';

/**
 * Encryption at rest, end to end: the real server (in-process, over HTTP) and the real agent (the CLI as a
 * child), on local storage and S3. Storage is looked at through the raw adapter, as whoever holds the
 * bucket or the storage folder would.
 */

const MARKER = 'DISKVAULT-ENCRYPTION-MARKER-4f1c9a';

/** A compressible run of the marker, random bytes, and the marker again: ~1.8 MiB. */
async function writeMarkedImage(dir: string): Promise<{ file: string; sha256: string }> {
  const marked = Buffer.from(`${MARKER} `.repeat(Math.ceil((512 * 1024) / (MARKER.length + 1)))).subarray(
    0,
    512 * 1024,
  );
  const image = Buffer.concat([marked, randomBytes(1024 * 1024), marked.subarray(0, 256 * 1024)]);
  const file = path.join(dir, 'marked.img');
  await writeFile(file, image);
  return { file, sha256: await sha256File(file) };
}

/** Every object in storage: key and bytes as stored. */
async function storedObjects(srv: TestServer): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  for await (const e of srv.storage.list('')) out.set(e.key, await srv.storage.getBytes(e.key));
  return out;
}

async function snapshotChunkIds(conn: Conn, snapshot: string): Promise<string[]> {
  const client = new DiskvaultClient({ server: conn.server, token: conn.token });
  try {
    return [...new Set((await readSnapshot(client, snapshot)).entries.map((e) => e.id))];
  } finally {
    client.close();
  }
}

/** Flips one byte in the middle of a stored object, through the adapter (local files and S3 alike). */
async function flipByte(srv: TestServer, key: string): Promise<Buffer> {
  const original = await srv.storage.getBytes(key);
  const changed = Buffer.from(original);
  changed[Math.floor(changed.length / 2)] ^= 0x01;
  await srv.storage.put(key, changed);
  return original;
}

for (const storage of ['local', 's3'] as const) {
  test(`[${storage}] nothing readable in storage: no marker in any object, no chunk id in any name; restore is bit-exact; a flipped byte in a chunk or a manifest is named by restore and verify`, async (t) => {
    const work = await tempDir('crypt');
    // No read cache: a corrupted object is read from storage again, not served from memory.
    const srv = await startTestServer({ storage, cacheBytes: 0 });
    try {
      const conn = { server: srv.url, token: srv.adminToken };
      const image = await writeMarkedImage(work);
      const run = await backupCli(conn, image.file, 'h1', 'sda');
      t.is(run.code, 0, run.stderr);
      const snapshot = summaryOf(run).snapshot;
      const ids = await snapshotChunkIds(conn, snapshot);

      const objects = await storedObjects(srv);
      const chunkKeys = [...objects.keys()].filter((k) => k.startsWith('chunks/'));
      t.is(chunkKeys.length, ids.length, 'one object per distinct chunk');
      t.deepEqual([...objects.keys()].filter((k) => !k.startsWith('chunks/')).sort(), [
        'config',
        `snapshots/${snapshot}`,
      ]);
      for (const [key, bytes] of objects) {
        t.false(bytes.includes(MARKER), `${key} holds the marker`);
        for (const id of ids) t.false(key.includes(id), `${key} names chunk ${id}`);
      }
      t.regex(objects.get('config')?.toString('utf8') ?? '', /"formatVersion": 2/);

      const restored = path.join(work, 'restored.img');
      t.is(await restoreSha(conn, snapshot, restored), image.sha256);

      // A flipped byte in the manifest: restore stops naming the snapshot, verify lists the manifest.
      const manifestKey = `snapshots/${snapshot}`;
      const goodManifest = await flipByte(srv, manifestKey);
      const badRestore = await dv(['restore', snapshot, path.join(work, 'm.img'), '--json'], conn);
      t.is(badRestore.code, 1);
      t.regex(badRestore.stderr, new RegExp(`snapshot ${snapshot}`));
      const manifestVerify = await verifyCli(conn, false);
      t.deepEqual(
        manifestVerify.report.badManifests.map((m) => m.snapshot),
        [snapshot],
      );
      t.regex(manifestVerify.report.badManifests[0]?.detail ?? '', /fails authentication/);
      await srv.storage.put(manifestKey, goodManifest);

      // A flipped byte in one chunk: restore fails naming it, verify --read-data names it and the snapshot.
      const victim = ids[Math.floor(ids.length / 2)] as string;
      const victimKey = (
        srv.repo as import('../../repo-engine/repository.js').Repository
      ).storedObjects.chunkKey(victim);
      t.true(objects.has(victimKey));
      await flipByte(srv, victimKey);
      const chunkRestore = await dv(['restore', snapshot, path.join(work, 'c.img'), '--json'], conn);
      t.is(chunkRestore.code, 1);
      t.regex(chunkRestore.stderr, new RegExp(`chunk ${victim}`));
      const chunkVerify = await verifyCli(conn, true);
      t.false(chunkVerify.report.ok);
      t.deepEqual(
        chunkVerify.report.problems.map((p) => [p.chunk, p.kind, p.snapshots]),
        [[victim, 'corrupt', [snapshot]]],
      );
    } finally {
      await srv.stop();
      await removeDir(work);
    }
  });
}

/**
 * Starts `diskvault server` on `dataDir` and waits until it exits (code and stderr) or listens (code
 * undefined, and `stop` ends it).
 */
function spawnServerExpectingFailure(
  dataDir: string,
  args: string[] = [],
): Promise<{ code: number | null | undefined; stderr: string; stop?: () => Promise<void> }> {
  return new Promise((resolve, reject) => {
    const child = spawn(DISKVAULT, ['server', '--listen', '127.0.0.1:0', '--data', dataDir, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`server neither started nor failed in 60 s:\n${stdout}\n${stderr}`));
    }, 60_000);
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
      if (/listening on/.test(stdout)) {
        clearTimeout(timer);
        const exited = new Promise<void>((r) => child.once('exit', () => r()));
        resolve({
          code: undefined,
          stderr,
          stop: async () => {
            child.kill('SIGTERM');
            await exited;
          },
        });
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stderr });
    });
  });
}

async function restoreSha(conn: Conn, snapshot: string, target: string): Promise<string> {
  const r = await dv(['restore', snapshot, target, '--json'], conn);
  if (r.code !== 0) throw new Error(`restore failed (${r.code}): ${r.stderr}`);
  return sha256File(target);
}

test('the repository key stays in the data folder (0600); a server without it, with another key, or with a changed config refuses to start and says why; key show prints it', async (t) => {
  const work = await tempDir('crypt-key');
  const dataDir = path.join(work, 'data');
  try {
    const first = await startTestServer({ dataDir });
    const conn = { server: first.url, token: first.adminToken };
    const image = await writeMarkedImage(work);
    const run = await backupCli(conn, image.file, 'h1', 'sda');
    t.is(run.code, 0, run.stderr);
    const snapshot = summaryOf(run).snapshot;
    await first.stop();

    const keyFile = path.join(dataDir, 'repository.key');
    const { statSync } = await import('node:fs');
    t.is(statSync(keyFile).mode & 0o777, 0o600);
    const key = (await readFile(keyFile, 'utf8')).trim();
    t.regex(key, /^[0-9a-f]{64}$/);
    const shown = await runCli(['server', 'key', 'show', '--data', dataDir], {});
    t.is(shown.code, 0, shown.stderr);
    t.is(shown.stdout, `${key}\n`);

    // Without the key.
    const moved = path.join(work, 'kept.key');
    await rename(keyFile, moved);
    const noKey = await spawnServerExpectingFailure(dataDir);
    t.is(noKey.code, 1);
    t.regex(noKey.stderr, /is encrypted and its key was not found: expected in .*repository\.key/);
    t.regex(noKey.stderr, /--repository-key-file/);
    t.notRegex(noKey.stderr, /\n\s+at /);
    // With another key.
    await writeFile(keyFile, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
    const wrong = await spawnServerExpectingFailure(dataDir);
    t.is(wrong.code, 1);
    t.regex(wrong.stderr, /is not the key of the repository/);
    // With the key given by flag, from outside the data folder.
    const given = await spawnServerExpectingFailure(dataDir, ['--repository-key-file', moved]);
    t.is(given.code, undefined, given.stderr);
    await given.stop?.();
    await rename(moved, keyFile);

    // A changed config (a chunker digit) is refused, not used.
    const configFile = path.join(dataDir, 'storage', 'config');
    const config = await readFile(configFile, 'utf8');
    await writeFile(configFile, config.replace('"avg": 65536', '"avg": 65537'));
    const changed = await spawnServerExpectingFailure(dataDir);
    t.is(changed.code, 1);
    t.regex(changed.stderr, /config .* has been changed/);
    // A config swapped for a plaintext one (format 1, no encryption) by someone who can write to storage
    // but has no key: refused, or new chunks would be stored unencrypted.
    const plain = JSON.parse(config);
    plain.formatVersion = 1;
    delete plain.encryption;
    await writeFile(configFile, JSON.stringify(plain, null, 2));
    const downgraded = await spawnServerExpectingFailure(dataDir);
    t.is(downgraded.code, 1);
    t.regex(downgraded.stderr, /says it is not encrypted, but a repository key exists/);
    t.notRegex(downgraded.stderr, /\n\s+at /);
    await writeFile(configFile, config);

    const again = await startTestServer({ dataDir });
    try {
      t.is(
        await restoreSha({ server: again.url, token: again.adminToken }, snapshot, path.join(work, 'r.img')),
        image.sha256,
      );
    } finally {
      await again.stop();
    }
  } finally {
    await removeDir(work);
  }
});

test('a plaintext (format 1) repository keeps working: backup and bit-exact restore, names and bytes as before, no key', async (t) => {
  const work = await tempDir('crypt-plain');
  const dataDir = path.join(work, 'data');
  try {
    const srv = await startTestServer({ dataDir, encryption: 'none' });
    try {
      const conn = { server: srv.url, token: srv.adminToken };
      const image = await writeMarkedImage(work);
      const run = await backupCli(conn, image.file, 'h1', 'sda');
      t.is(run.code, 0, run.stderr);
      const snapshot = summaryOf(run).snapshot;
      const ids = await snapshotChunkIds(conn, snapshot);
      const objects = await storedObjects(srv);
      t.regex(objects.get('config')?.toString('utf8') ?? '', /"formatVersion": 1/);
      // What encryption hides: the marker in the compressed chunks, the ids in the names.
      t.true([...objects.values()].some((b) => b.includes(MARKER)));
      for (const id of ids) t.true(objects.has(`chunks/${id.slice(0, 2)}/${id}`));
      t.is(await restoreSha(conn, snapshot, path.join(work, 'r.img')), image.sha256);
      t.true((await verifyCli(conn, true)).report.ok);
    } finally {
      await srv.stop();
    }
    const { existsSync } = await import('node:fs');
    t.false(existsSync(path.join(dataDir, 'repository.key')));
    const shown = await runCli(['server', 'key', 'show', '--data', dataDir], {});
    t.is(shown.code, 1);
    t.regex(shown.stderr, /no repository key at/);
  } finally {
    await removeDir(work);
  }
});
