import { join } from 'node:path';
import test from 'ava';
import { baseImage, qemuImg, tempDir } from './support/images.js';
import { assertReadsLikeQemu } from './support/reader-contract.js';

for (const [name, option] of [
  ['dynamic', 'static=off'],
  ['fixed', 'static=on'],
]) {
  test(`VDI ${name} reads exactly as qemu reads it`, async (t) => {
    const dir = tempDir(t);
    const img = join(dir, `${name}.vdi`);
    await qemuImg('convert', '-f', 'raw', '-O', 'vdi', '-o', option, await baseImage(), img);
    await assertReadsLikeQemu(t, img, 'vdi', 'vdi', dir);
  });
}
