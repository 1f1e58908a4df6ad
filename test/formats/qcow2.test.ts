import { join } from 'node:path';
import test from 'ava';
import { baseImage, qemuImg, tempDir } from './support/images.js';
import { assertReadsLikeQemu } from './support/reader-contract.js';

test('qcow2 v2 (compat=0.10) reads exactly as qemu reads it', async (t) => {
  const dir = tempDir(t);
  const img = join(dir, 'v2.qcow2');
  await qemuImg('convert', '-f', 'raw', '-O', 'qcow2', '-o', 'compat=0.10', await baseImage(), img);
  await assertReadsLikeQemu(t, img, 'qcow2', 'qcow2', dir);
});

test('qcow2 v3 (compat=1.1) with 4 KiB clusters reads exactly as qemu reads it', async (t) => {
  const dir = tempDir(t);
  const img = join(dir, 'v3.qcow2');
  await qemuImg(
    'convert',
    '-f',
    'raw',
    '-O',
    'qcow2',
    '-o',
    'compat=1.1,cluster_size=4096',
    await baseImage(),
    img,
  );
  await assertReadsLikeQemu(t, img, 'qcow2', 'qcow2', dir);
});

test('qcow2 v3 with 2 MiB clusters reads exactly as qemu reads it', async (t) => {
  const dir = tempDir(t);
  const img = join(dir, 'big-clusters.qcow2');
  await qemuImg('convert', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=2M', await baseImage(), img);
  await assertReadsLikeQemu(t, img, 'qcow2', 'qcow2', dir);
});

test('compressed qcow2 clusters (deflate) are decoded', async (t) => {
  const dir = tempDir(t);
  const img = join(dir, 'deflate.qcow2');
  await qemuImg('convert', '-c', '-f', 'raw', '-O', 'qcow2', await baseImage(), img);
  await assertReadsLikeQemu(t, img, 'qcow2', 'qcow2', dir);
});

test('compressed qcow2 clusters (zstd compression type) are decoded', async (t) => {
  const dir = tempDir(t);
  const img = join(dir, 'zstd.qcow2');
  await qemuImg(
    'convert',
    '-c',
    '-f',
    'raw',
    '-O',
    'qcow2',
    '-o',
    'compression_type=zstd',
    await baseImage(),
    img,
  );
  await assertReadsLikeQemu(t, img, 'qcow2', 'qcow2', dir);
});
