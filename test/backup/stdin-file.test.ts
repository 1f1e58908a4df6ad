import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { StdinFileSource } from '../../agent/sources/stdin-file.js';

test('a file on stdin is the image after its descriptor position: size known, read at any offset, the position left alone', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'dv-stdin-file-'));
  const file = join(dir, 'disk.img');
  const data = randomBytes(3 * 65536 + 123);
  await writeFile(file, data);
  const fd = openSync(file, 'r');
  try {
    readSync(fd, Buffer.alloc(1000), 0, 1000, null);
    const source = await StdinFileSource.open(fd);
    t.truthy(source);
    t.is(source!.size, data.length - 1000);
    t.true(source!.seekable);
    t.is(source!.format, 'raw');
    const first = Buffer.alloc(100_000);
    t.is(await source!.read(first, 0), 100_000);
    t.true(first.equals(data.subarray(1000, 101_000)));
    // out of order and again, as a commit that repairs a lost chunk reads it
    const again = Buffer.alloc(5000);
    t.is(await source!.read(again, 50_000), 5000);
    t.true(again.equals(data.subarray(51_000, 56_000)));
    const rest = Buffer.alloc(200_000);
    const n = await source!.read(rest, 100_000);
    t.is(n, data.length - 101_000);
    t.true(rest.subarray(0, n).equals(data.subarray(101_000)));
    t.is(await source!.read(Buffer.alloc(10), data.length - 1000), 0);
    await source!.close();
    // the descriptor is the caller's: still open, and still where it was
    const next = Buffer.alloc(1);
    t.is(readSync(fd, next, 0, 1, null), 1);
    t.is(next[0], data[1000]);
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
