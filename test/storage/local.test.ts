import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, rm, stat, utimes, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { ConflictError, InvalidInputError, StorageFullError } from '../../common/errors.js';
import { openLocalStorage } from '../../storage-adapters/local.js';
import { withFaults } from '../helpers/fault-injecting-storage.js';
import { keysOf, storageContract } from '../helpers/storage-contract.js';

storageContract('local', async () => {
  const root = await mkdtemp(path.join(os.tmpdir(), 'dv-local-contract-'));
  return { adapter: await openLocalStorage(root), cleanup: () => rm(root, { recursive: true, force: true }) };
});

/** What only the local adapter promises: containment in its root, temp-file hygiene, crash safety. */

const MiB = 1024 * 1024;

async function tempRoot(t: { teardown(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'dv-local-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** All file names under a folder, relative, for "touched nothing" checks. */
async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => e.isFile())
    .map((e) => path.relative(dir, path.join(e.parentPath, e.name)))
    .sort();
}

test('traversal keys cannot reach outside the root', async (t) => {
  const outer = await tempRoot(t);
  const root = path.join(outer, 'store');
  await writeFile(path.join(outer, 'secret'), 'outside');
  const s = await openLocalStorage(root);
  for (const key of ['../secret', 'a/../../secret', `${outer}/secret`, '..\\secret', 'a/..']) {
    await t.throwsAsync(() => s.getBytes(key), { instanceOf: InvalidInputError });
    await t.throwsAsync(() => s.put(key, Buffer.from('overwritten')), { instanceOf: InvalidInputError });
    await t.throwsAsync(() => s.delete(key), { instanceOf: InvalidInputError });
  }
  t.deepEqual(await filesUnder(outer), ['secret']);
});

test('temp files of unfinished puts are never listed and stale ones are removed at open', async (t) => {
  const root = await tempRoot(t);
  const s = await openLocalStorage(root);
  await s.put('chunks/ab/cd/abcd', Buffer.from('chunk'));
  const folder = path.join(root, 'chunks', 'ab', 'cd');
  const stale = path.join(folder, '.tmp~stale');
  const fresh = path.join(folder, '.tmp~fresh');
  await writeFile(stale, 'half a chunk');
  await writeFile(fresh, 'a put in progress');
  const hourAgo = new Date(Date.now() - 60 * 60 * 1000);
  await utimes(stale, hourAgo, hourAgo);
  await mkdir(path.join(root, 'lost+found'));
  await writeFile(path.join(root, 'stray file'), 'not a key');

  t.deepEqual(await keysOf(s, ''), ['chunks/ab/cd/abcd']);
  await openLocalStorage(root);
  const left = await readdir(folder);
  t.false(left.includes('.tmp~stale'), 'a stale temp file is removed');
  t.true(left.includes('.tmp~fresh'), 'a recent one may belong to a live put and stays');
  t.deepEqual(await keysOf(s, ''), ['chunks/ab/cd/abcd']);
});

test('a full disk fails the put with StorageFullError and leaves no temp file', async (t) => {
  const root = await tempRoot(t);
  const s = await openLocalStorage(root);
  const noSpace = Object.assign(new Error('ENOSPC: no space left on device'), { code: 'ENOSPC' });
  const source = new Readable({
    read() {
      this.push(Buffer.alloc(MiB));
      setImmediate(() => this.destroy(noSpace));
    },
  });
  await t.throwsAsync(() => s.put('full/key', source), { instanceOf: StorageFullError });
  t.deepEqual(await filesUnder(root), []);
});

test('the fault wrapper fills the disk after N bytes and a put succeeds once space is freed', async (t) => {
  const root = await tempRoot(t);
  const s = withFaults(await openLocalStorage(root), { failPutAfterBytes: 3 * MiB });
  await s.put('fill/one', Buffer.alloc(2 * MiB, 1));
  await t.throwsAsync(() => s.put('fill/two', Buffer.alloc(2 * MiB, 2)), { instanceOf: StorageFullError });
  const streamed = Readable.from(Array.from({ length: 4 }, (_, i) => Buffer.alloc(512 * 1024, i)));
  await t.throwsAsync(() => s.put('fill/three', streamed), { instanceOf: StorageFullError });
  t.deepEqual(await keysOf(s, ''), ['fill/one']);
  t.deepEqual(await filesUnder(root), ['fill/one'], 'no partial or temp file is left');

  s.setFaults({});
  await s.put('fill/three', Readable.from([Buffer.alloc(2 * MiB, 3)]));
  t.deepEqual(await keysOf(s, ''), ['fill/one', 'fill/three']);
});

test('the fault wrapper can refuse deletes and break a listing half way', async (t) => {
  const root = await tempRoot(t);
  const s = withFaults(await openLocalStorage(root));
  for (const key of ['l/1', 'l/2', 'l/3']) await s.put(key, Buffer.from(key));
  s.setFaults({ failDeletes: true, failListAfterEntries: 2 });
  await t.throwsAsync(() => s.delete('l/1'), { code: 'Forbidden' } as never);
  await t.throwsAsync(() => s.deleteMany(['l/1']), { code: 'Forbidden' } as never);
  await t.throwsAsync(() => keysOf(s, 'l/'), { code: 'Unavailable' } as never);
  s.setFaults({});
  t.deepEqual(await keysOf(s, 'l/'), ['l/1', 'l/2', 'l/3']);
});

test('a key cannot be both an object and a folder of keys', async (t) => {
  const root = await tempRoot(t);
  const s = await openLocalStorage(root);
  await s.put('x/file', Buffer.from('1'));
  await t.throwsAsync(() => s.put('x/file/below', Buffer.from('2')), { instanceOf: ConflictError });
  await t.throwsAsync(() => s.put('x', Buffer.from('3')), { instanceOf: ConflictError });
  t.deepEqual(await keysOf(s, ''), ['x/file']);
  t.deepEqual(await filesUnder(root), ['x/file']);
});

const childScript = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'helpers', 'put-child.js');

/** Runs put-child.js and SIGKILLs it once the put has taken `killAfterMiB` and waits; resolves when it is gone. */
function killPutMidway(root: string, key: string, totalMiB: number, killAfterMiB: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [childScript, root, key, String(totalMiB), String(killAfterMiB)], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stderr.on('data', (d) => {
      stderr += d;
    });
    child.stdout.on('data', (d) => {
      stdout += d;
      if (stdout.includes('holding')) child.kill('SIGKILL');
    });
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      if (signal === 'SIGKILL') resolve(stdout);
      else reject(new Error(`child ended by itself (code ${code}) before it was killed: ${stderr}`));
    });
  });
}

function expectedSha256(totalMiB: number): string {
  const hash = createHash('sha256');
  for (let i = 0; i < totalMiB; i++) hash.update(Buffer.alloc(MiB, i & 0xff));
  return hash.digest('hex');
}

test('a put killed mid-way leaves the key absent or the old value whole, never partial', async (t) => {
  const root = await tempRoot(t);
  const s = await openLocalStorage(root);
  await s.put('crash/existing', Buffer.from('old value'));

  await killPutMidway(root, 'crash/new', 256, 64);
  await killPutMidway(root, 'crash/existing', 256, 64);

  t.is(await s.stat('crash/new'), undefined);
  t.is((await s.getBytes('crash/existing')).toString(), 'old value');
  t.deepEqual(await keysOf(s, 'crash/'), ['crash/existing']);
  const leftovers = (await readdir(path.join(root, 'crash'))).filter((n) => n.startsWith('.tmp~'));
  t.true(leftovers.length > 0, 'the kill really interrupted a put that had written data');
  const tempSize = (await stat(path.join(root, 'crash', leftovers[0]))).size;
  t.true(tempSize > 0);

  await openLocalStorage(root, { tempMaxAgeMs: 0 });
  t.deepEqual(
    (await readdir(path.join(root, 'crash'))).filter((n) => n.startsWith('.tmp~')),
    [],
    'reopening removes the leftovers',
  );
});

test('a put that completes in a child process is whole when read back', async (t) => {
  const root = await tempRoot(t);
  const out = await new Promise<string>((resolve, reject) => {
    const child = spawn(process.execPath, [childScript, root, 'whole/key', '32'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let stdout = '';
    child.stdout.on('data', (d) => {
      stdout += d;
    });
    child.on('error', reject);
    child.on('exit', () => resolve(stdout));
  });
  t.true(out.includes('done'));
  const s = await openLocalStorage(root);
  const hash = createHash('sha256')
    .update(await s.getBytes('whole/key'))
    .digest('hex');
  t.is(hash, expectedSha256(32));
});
