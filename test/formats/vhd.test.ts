import { join } from 'node:path';
import test from 'ava';
import { baseImage, qemuImg, tempDir } from './support/images.js';
import { assertReadsLikeQemu } from './support/reader-contract.js';

for (const subformat of ['fixed', 'dynamic']) {
  test(`VHD ${subformat} reads exactly as qemu reads it`, async (t) => {
    const dir = tempDir(t);
    const img = join(dir, `${subformat}.vhd`);
    await qemuImg(
      'convert',
      '-f',
      'raw',
      '-O',
      'vpc',
      '-o',
      `subformat=${subformat}`,
      await baseImage(),
      img,
    );
    await assertReadsLikeQemu(t, img, 'vpc', 'vhd', dir);
  });
}

test('VHD sized by current_size (force_size, creator qem2) reads exactly as qemu reads it', async (t) => {
  const dir = tempDir(t);
  const img = join(dir, 'forced.vhd');
  await qemuImg(
    'convert',
    '-f',
    'raw',
    '-O',
    'vpc',
    '-o',
    'subformat=dynamic,force_size=on',
    await baseImage(),
    img,
  );
  await assertReadsLikeQemu(t, img, 'vpc', 'vhd', dir);
});
