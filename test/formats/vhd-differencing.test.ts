import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import { openContainer } from '../../agent/formats/index.js';
import { BASE_SIZE, baseImage, qemuImg, readWhole, tempDir } from './support/images.js';
import { writeDifferencingVhd } from './support/vhd-differencing.js';

const BLOCK = 2 * 1024 * 1024;

test('a differencing VHD reads its own sectors where its bitmap says so and its parent elsewhere', async (t) => {
  const dir = tempDir(t);
  const base = await baseImage();
  await qemuImg(
    'convert',
    '-f',
    'raw',
    '-O',
    'vpc',
    '-o',
    'subformat=dynamic,force_size=on',
    base,
    join(dir, 'parent.vhd'),
  );
  const blocks = [
    {
      block: 1,
      runs: [
        [0, 100],
        [200, 100],
        [4095, 1],
      ] as [number, number][],
      fill: 0xab,
    },
    { block: 3, runs: [[0, 4096]] as [number, number][], fill: 0xcd },
    { block: 30, runs: [[17, 3]] as [number, number][], fill: 0x12 },
  ];
  await writeDifferencingVhd(join(dir, 'child.vhd'), BASE_SIZE, 'parent.vhd', blocks);
  const expected = await readFile(base);
  for (const b of blocks) {
    for (const [first, count] of b.runs)
      expected.fill(b.fill, b.block * BLOCK + first * 512, b.block * BLOCK + (first + count) * 512);
  }
  const src = await openContainer(join(dir, 'child.vhd'), 'vhd');
  t.is(src?.format, 'vhd');
  t.is(src?.size, BASE_SIZE);
  const got = await readWhole(src!);
  await src?.close();
  t.is(
    got.indexOf(0xee),
    expected.indexOf(0xee),
    'no sector the bitmap leaves to the parent comes from the child',
  );
  t.true(got.equals(expected));
});

test('a differencing VHD whose parent is missing names the paths it tried; one naming itself is a loop', async (t) => {
  const dir = tempDir(t);
  await writeDifferencingVhd(join(dir, 'orphan.vhd'), 8 * BLOCK, 'vanished.vhd', []);
  const missing = await t.throwsAsync(openContainer(join(dir, 'orphan.vhd'), 'vhd'));
  t.is((missing as { code?: string }).code, 'NotFound');
  t.regex(missing?.message ?? '', /vanished\.vhd/);
  await writeDifferencingVhd(join(dir, 'self.vhd'), 8 * BLOCK, 'self.vhd', []);
  const loop = await t.throwsAsync(openContainer(join(dir, 'self.vhd'), 'vhd'));
  t.is((loop as { code?: string }).code, 'InvalidInput');
  t.regex(loop?.message ?? '', /loops/);
});
