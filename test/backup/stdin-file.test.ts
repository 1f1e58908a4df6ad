import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { StdinFileSource } from '../../agent/sources/stdin-file.js';

test('a file on stdin is read in order from where its descriptor stands, into the caller buffer, to its end', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'dv-stdin-file-'));
  const file = join(dir, 'disk.img');
  const data = randomBytes(3 * 65536 + 123);
  await writeFile(file, data);
  const fd = openSync(file, 'r');
  try {
    readSync(fd, Buffer.alloc(1000), 0, 1000, null);
    const source = await StdinFileSource.open(fd);
    t.truthy(source);
    t.is(source!.size, null);
    t.false(source!.seekable);
    const first = Buffer.alloc(100_000);
    t.is(await source!.read(first, 0), 100_000);
    t.true(first.equals(data.subarray(1000, 101_000)));
    await t.throwsAsync(source!.read(Buffer.alloc(10), 5), { message: /only be read in order/ });
    const rest = Buffer.alloc(200_000);
    const n = await source!.read(rest, 100_000);
    t.is(n, data.length - 101_000);
    t.true(rest.subarray(0, n).equals(data.subarray(101_000)));
    t.is(await source!.read(Buffer.alloc(10), 100_000 + n), 0);
    await source!.close();
    // the descriptor is the caller's: still open
    t.is(readSync(fd, Buffer.alloc(1), 0, 1, 0), 1);
  } finally {
    closeSync(fd);
    await rm(dir, { recursive: true, force: true });
  }
});

test('a pipe on stdin is not taken for a file: it stays a stream', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'dv-stdin-fifo-'));
  const fifo = join(dir, 'fifo');
  execFileSync('mkfifo', [fifo]);
  // read-write, so the open does not wait for a writer (Linux)
  const fd = openSync(fifo, 'r+');
  try {
    t.is(await StdinFileSource.open(fd), null);
  } finally {
    closeSync(fd);
    await rm(dir, { recursive: true, force: true });
  }
});
