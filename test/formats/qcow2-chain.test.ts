import { open, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import { openContainer } from '../../agent/formats/index.js';
import { baseImage, qemuImg, sh, tempDir } from './support/images.js';
import { assertReadsLikeQemu } from './support/reader-contract.js';

test('a qcow2 overlay reads through its backing chain: relative backing name, written and zeroed clusters, larger overlay', async (t) => {
  const dir = tempDir(t);
  await qemuImg('convert', '-f', 'raw', '-O', 'qcow2', await baseImage(), join(dir, 'base.qcow2'));
  // The overlay names its backing file relatively and is opened from another working directory.
  await qemuImg('create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', join(dir, 'mid.qcow2'));
  await sh('qemu-io', [
    '-f',
    'qcow2',
    '-c',
    'write -P 0xab 1M 64k',
    '-c',
    'write -z 8M 256k',
    '-c',
    'write -P 0x11 5000k 3k',
    join(dir, 'mid.qcow2'),
  ]);
  await qemuImg('create', '-f', 'qcow2', '-b', 'mid.qcow2', '-F', 'qcow2', join(dir, 'top.qcow2'), '120M');
  await sh('qemu-io', [
    '-f',
    'qcow2',
    '-c',
    'write -P 0xcd 1056k 64k',
    '-c',
    'write -P 0xef 100M 1M',
    join(dir, 'top.qcow2'),
  ]);
  await assertReadsLikeQemu(t, join(dir, 'top.qcow2'), 'qcow2', 'qcow2', dir, 'qcow2');
});

test('a qcow2 overlay over a raw backing file reads through it', async (t) => {
  const dir = tempDir(t);
  await qemuImg('create', '-f', 'qcow2', '-b', await baseImage(), '-F', 'raw', join(dir, 'over-raw.qcow2'));
  await sh('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x77 2M 128k', join(dir, 'over-raw.qcow2')]);
  await assertReadsLikeQemu(t, join(dir, 'over-raw.qcow2'), 'qcow2', 'qcow2', dir, 'qcow2');
});

test('a missing backing file is a NotFound error naming it', async (t) => {
  const dir = tempDir(t);
  await qemuImg(
    'create',
    '-f',
    'qcow2',
    '-u',
    '-b',
    'gone.qcow2',
    '-F',
    'qcow2',
    join(dir, 'orphan.qcow2'),
    '10M',
  );
  const err = await t.throwsAsync(openContainer(join(dir, 'orphan.qcow2'), 'qcow2'));
  t.is((err as { code?: string }).code, 'NotFound');
  t.regex(err?.message ?? '', /gone\.qcow2/);
});

test('an encrypted (LUKS) qcow2 image is refused with a clear message', async (t) => {
  const dir = tempDir(t);
  const img = join(dir, 'luks.qcow2');
  // qemu times its key derivation by the thread's CPU time and gives up ("Unable to get accurate CPU
  // usage") when a first run of 2^15 iterations registers as 0 ms, which a loaded machine with tick-granular
  // accounting produces now and then (seen once in CI). That is qemu's own benchmark, not what is under
  // test here: try again.
  for (let attempt = 1; ; attempt++) {
    try {
      await qemuImg(
        'create',
        '--object',
        'secret,id=s0,data=x',
        '-f',
        'qcow2',
        '-o',
        'encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10',
        img,
        '8M',
      );
      break;
    } catch (err) {
      if (attempt >= 5 || !/Unable to get accurate CPU usage/.test((err as Error).message)) throw err;
    }
  }
  const err = await t.throwsAsync(openContainer(img));
  t.is((err as { code?: string }).code, 'InvalidInput');
  t.regex(err?.message ?? '', /encrypted qcow2 image \(LUKS\)/);
});

test('an AES-encrypted qcow2 header (crypt_method 1) is refused', async (t) => {
  const dir = tempDir(t);
  const img = join(dir, 'aes.qcow2');
  await qemuImg('create', '-f', 'qcow2', img, '8M');
  const fh = await open(img, 'r+');
  const one = Buffer.alloc(4);
  one.writeUInt32BE(1);
  await fh.write(one, 0, 4, 32);
  await fh.close();
  const err = await t.throwsAsync(openContainer(img));
  t.is((err as { code?: string }).code, 'InvalidInput');
  t.regex(err?.message ?? '', /encrypted qcow2 image \(AES\)/);
});

test('qcow2 with extended L2 entries or an external data file is refused by name', async (t) => {
  const dir = tempDir(t);
  await qemuImg('create', '-f', 'qcow2', '-o', 'extended_l2=on', join(dir, 'ext.qcow2'), '8M');
  await writeFile(join(dir, 'data.raw'), '');
  await qemuImg(
    'create',
    '-f',
    'qcow2',
    '-o',
    `data_file=${join(dir, 'data.raw')}`,
    join(dir, 'df.qcow2'),
    '8M',
  );
  const ext = await t.throwsAsync(openContainer(join(dir, 'ext.qcow2')));
  t.regex(ext?.message ?? '', /extended L2 entries/);
  const df = await t.throwsAsync(openContainer(join(dir, 'df.qcow2')));
  t.regex(df?.message ?? '', /external data file/);
  t.is((df as { code?: string }).code, 'InvalidInput');
});
