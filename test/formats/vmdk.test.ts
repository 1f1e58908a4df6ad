import { join } from 'node:path';
import test from 'ava';
import { baseImage, qemuImg, tempDir } from './support/images.js';
import { assertReadsLikeQemu } from './support/reader-contract.js';

for (const subformat of [
  'monolithicSparse',
  'monolithicFlat',
  'streamOptimized',
  'twoGbMaxExtentSparse',
  'twoGbMaxExtentFlat',
]) {
  test(`VMDK ${subformat} reads exactly as qemu reads it`, async (t) => {
    const dir = tempDir(t);
    const img = join(dir, `${subformat}.vmdk`);
    await qemuImg(
      'convert',
      '-f',
      'raw',
      '-O',
      'vmdk',
      '-o',
      `subformat=${subformat}`,
      await baseImage(),
      img,
    );
    // A descriptor naming extent files is read only when the user says it is a VMDK (--format vmdk).
    const descriptor = subformat !== 'monolithicSparse' && subformat !== 'streamOptimized';
    await assertReadsLikeQemu(t, img, 'vmdk', 'vmdk', dir, descriptor ? 'vmdk' : undefined);
  });
}
