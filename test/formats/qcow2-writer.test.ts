import { existsSync, readdirSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import { openContainer, Qcow2Writer, writeQcow2FromRaw } from '../../agent/formats/index.js';
import {
  baseImage,
  fileSize,
  qemuImg,
  qemuRaw,
  readWhole,
  sh,
  sha256File,
  tempDir,
} from './support/images.js';

/** qemu-img check exits 0 only for an image without errors or leaks. */
async function assertQemuAccepts(path: string): Promise<string> {
  return qemuImg('check', '-f', 'qcow2', path);
}

test('writeQcow2FromRaw output passes qemu-img check and converts back to the same raw image', async (t) => {
  const dir = tempDir(t);
  const base = await baseImage();
  const out = join(dir, 'out.qcow2');
  await writeQcow2FromRaw(base, out);
  t.regex(await assertQemuAccepts(out), /No errors were found/);
  t.is(await sha256File(await qemuRaw(out, 'qcow2', dir)), await sha256File(base));
  t.true(fileSize(out) < fileSize(base), 'free space of the ext4 image is not stored');
});

test('Qcow2Writer accepts unaligned pieces out of order and concurrently, and leaves zero clusters unallocated', async (t) => {
  const dir = tempDir(t);
  const raw = await readFile(await baseImage());
  const size = raw.length + 300; // not a sector multiple: qcow2 pads the last sector with zeros
  const pieces: [number, number][] = [];
  let seed = 12345;
  for (let pos = 0; pos < raw.length; ) {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    const length = Math.min(raw.length - pos, 777 + (seed % (3 * 1024 * 1024)));
    pieces.push([pos, length]);
    pos += length;
  }
  // Deterministic shuffle, then write in batches of eight at once, as restore does.
  for (let i = pieces.length - 1; i > 0; i--) {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    const j = seed % (i + 1);
    [pieces[i], pieces[j]] = [pieces[j], pieces[i]];
  }
  const out = join(dir, 'shuffled.qcow2');
  const writer = await Qcow2Writer.create(out, size);
  for (let i = 0; i < pieces.length; i += 8) {
    await Promise.all(pieces.slice(i, i + 8).map(([o, n]) => writer.writeAt(o, raw.subarray(o, o + n))));
  }
  t.false(existsSync(out), 'nothing appears under the target name before finish');
  await writer.finish();
  t.regex(await assertQemuAccepts(out), /No errors were found/);
  const back = await readFile(await qemuRaw(out, 'qcow2', dir));
  t.is(back.length, Math.ceil(size / 512) * 512);
  t.true(back.subarray(0, raw.length).equals(raw));
  t.true(back.subarray(raw.length).every((b) => b === 0));
  // Our own reader agrees with qemu on the written image.
  const src = await openContainer(out);
  t.true((await readWhole(src!)).equals(back));
  await src?.close();
  const info = JSON.parse(await qemuImg('info', '--output=json', out)) as { 'actual-size': number };
  t.true(info['actual-size'] < raw.length, 'zero clusters are not allocated');
});

test('an all-zero disk becomes a tiny qcow2 that qemu reads as zeros', async (t) => {
  const dir = tempDir(t);
  const out = join(dir, 'zeros.qcow2');
  const writer = await Qcow2Writer.create(out, 1024 ** 3);
  await writer.writeAt(5 * 1024 * 1024, Buffer.alloc(4 * 1024 * 1024));
  await writer.finish();
  t.true(fileSize(out) <= 4 * 65536, `size ${fileSize(out)}`);
  t.regex(await assertQemuAccepts(out), /No errors were found/);
  const map = JSON.parse(await qemuImg('map', '--output=json', '-f', 'qcow2', out)) as { data: boolean }[];
  t.false(map.some((m) => m.data));
});

test('Qcow2Writer refuses writes outside the image and after finish; abort leaves the target untouched', async (t) => {
  const dir = tempDir(t);
  const out = join(dir, 'target.qcow2');
  await writeFile(out, 'previous content');
  const writer = await Qcow2Writer.create(out, 1024 * 1024);
  const outside = await t.throwsAsync(writer.writeAt(1024 * 1024 - 10, Buffer.alloc(20, 1)));
  t.is((outside as { code?: string }).code, 'InvalidInput');
  await writer.writeAt(0, Buffer.alloc(100, 1));
  await writer.abort();
  t.is(await readFile(out, 'utf8'), 'previous content');
  t.deepEqual(readdirSync(dir), ['target.qcow2'], 'no temporary file left behind');

  const done = await Qcow2Writer.create(out, 1024 * 1024);
  await done.writeAt(4096, Buffer.alloc(10, 7));
  await done.finish();
  const late = await t.throwsAsync(done.writeAt(0, Buffer.alloc(1, 1)));
  t.is((late as { code?: string }).code, 'Conflict');
  t.regex(await sh('qemu-io', ['-f', 'qcow2', '-c', 'read -P 7 4096 10', out]), /read 10\/10 bytes/);
});

test('Qcow2Writer with 4 KiB clusters spanning several L2 tables and refcount blocks passes qemu-img check', async (t) => {
  const dir = tempDir(t);
  const out = join(dir, 'small-clusters.qcow2');
  await writeQcow2FromRaw(await baseImage(), out, { clusterBits: 12 });
  t.regex(await assertQemuAccepts(out), /No errors were found/);
  t.is(await sha256File(await qemuRaw(out, 'qcow2', dir)), await sha256File(await baseImage()));
});
