import { copyFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import { openContainer } from '../../agent/formats/index.js';
import { baseImage, qemuImg, tempDir } from './support/images.js';

test('a raw image, an ISO-like file and an empty file open as null: the caller reads them as raw', async (t) => {
  const dir = tempDir(t);
  t.is(await openContainer(await baseImage()), null);
  const iso = join(dir, 'x.iso');
  const body = Buffer.alloc(64 * 1024);
  body.write('CD001', 0x8001, 'latin1');
  await writeFile(iso, body);
  t.is(await openContainer(iso), null);
  await writeFile(join(dir, 'empty.img'), '');
  t.is(await openContainer(join(dir, 'empty.img')), null);
});

test('format "raw" forces raw reading even of a qcow2 file', async (t) => {
  const dir = tempDir(t);
  await qemuImg('create', '-f', 'qcow2', join(dir, 'a.qcow2'), '1M');
  t.is(await openContainer(join(dir, 'a.qcow2'), 'raw'), null);
});

test('each container is detected from its magic whatever its file name', async (t) => {
  const dir = tempDir(t);
  const cases: [string, string[], string][] = [
    ['qcow2', ['-f', 'qcow2'], 'qcow2'],
    ['vhd-dynamic', ['-f', 'vpc', '-o', 'subformat=dynamic'], 'vhd'],
    ['vhd-fixed', ['-f', 'vpc', '-o', 'subformat=fixed'], 'vhd'],
    ['vmdk', ['-f', 'vmdk'], 'vmdk'],
    ['vdi', ['-f', 'vdi'], 'vdi'],
  ];
  for (const [name, args, format] of cases) {
    const path = join(dir, `${name}.img`);
    await qemuImg('create', ...args, path, '2M');
    const src = await openContainer(path);
    t.is(src?.format, format, name);
    t.true((src?.size ?? 0) >= 2 * 1024 * 1024, name);
    await src?.close();
  }
});

test('a VMDK descriptor file is detected by its text signature (and read once --format vmdk says so)', async (t) => {
  const dir = tempDir(t);
  await qemuImg('create', '-f', 'vmdk', '-o', 'subformat=monolithicFlat', join(dir, 'd.vmdk'), '3M');
  await copyFile(join(dir, 'd.vmdk'), join(dir, 'descriptor.txt'));
  // Detected, it names its extent file, which a detected format never opens: the error says to pass vmdk.
  const detected = await t.throwsAsync(openContainer(join(dir, 'descriptor.txt')));
  t.regex(detected?.message ?? '', /VMDK descriptor naming extent files.*pass --format vmdk/);
  const src = await openContainer(join(dir, 'descriptor.txt'), 'vmdk');
  t.is(src?.format, 'vmdk');
  t.is(src?.size, 3 * 1024 * 1024);
  await src?.close();
});

test('a VHDX image is refused with an error naming VHDX as unsupported', async (t) => {
  const dir = tempDir(t);
  await qemuImg('create', '-f', 'vhdx', join(dir, 'x.vhdx'), '8M');
  const err = await t.throwsAsync(openContainer(join(dir, 'x.vhdx')));
  t.is((err as { code?: string }).code, 'InvalidInput');
  t.regex(err?.message ?? '', /VHDX image, which diskvault does not support/);
});

test('a container given the wrong --format is refused, naming what its header says', async (t) => {
  const dir = tempDir(t);
  await qemuImg('create', '-f', 'vdi', join(dir, 'x.vdi'), '1M');
  const err = await t.throwsAsync(openContainer(join(dir, 'x.vdi'), 'qcow2'));
  t.is((err as { code?: string }).code, 'InvalidInput');
  t.regex(err?.message ?? '', /not a qcow2 image \(its header says vdi\)/);
  const unknown = await t.throwsAsync(openContainer(join(dir, 'x.vdi'), 'vhdx' as 'vdi'));
  t.regex(unknown?.message ?? '', /unknown image format 'vhdx'/);
  const raw = await t.throwsAsync(openContainer(await baseImage(), 'vmdk'));
  t.regex(raw?.message ?? '', /not a vmdk image \(its header says raw\)/);
});

test('a missing image is NotFound, a folder is InvalidInput', async (t) => {
  const dir = tempDir(t);
  const missing = await t.throwsAsync(openContainer(join(dir, 'nope.qcow2')));
  t.is((missing as { code?: string }).code, 'NotFound');
  const folder = await t.throwsAsync(openContainer(dir));
  t.is((folder as { code?: string }).code, 'InvalidInput');
});
