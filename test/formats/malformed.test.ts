import { open, readFile, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { compress } from 'zstd-napi';
import { type ContainerFormat, openContainer } from '../../agent/formats/index.js';
import { fileSize, patch, qemuImg, readWhole, sh, sha256Source, tempDir } from './support/images.js';

function be32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v);
  return b;
}
function be64(v: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(v);
  return b;
}
function le32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v);
  return b;
}

/** Opening and reading the whole disk must fail with the given code: never a crash, a hang or garbage. */
async function assertFails(
  t: ExecutionContext,
  path: string,
  code: string,
  message: RegExp,
  given?: ContainerFormat,
): Promise<void> {
  const err = await t.throwsAsync(async () => {
    const src = await openContainer(path, given);
    try {
      if (src) await sha256Source(src, 4 * 1024 * 1024);
    } finally {
      await src?.close();
    }
  });
  t.is((err as { code?: string }).code, code, err?.message);
  t.regex(err?.message ?? '', message);
}

/** A small qcow2 with data spread over it, so its tables point far into the file. */
async function smallQcow2(dir: string, name = 'small.qcow2'): Promise<string> {
  const img = join(dir, name);
  await qemuImg('create', '-f', 'qcow2', img, '16M');
  await sh('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x31 0 1M', '-c', 'write -P 0x32 10M 2M', img]);
  return img;
}

test('a truncated qcow2 fails with Corrupt naming what lies past the end', async (t) => {
  const dir = tempDir(t);
  const img = await smallQcow2(dir);
  await truncate(img, Math.floor(fileSize(img) / 2));
  await assertFails(t, img, 'Corrupt', /past the end/);
});

test('a qcow2 L1 entry pointing past the end of the file fails at open with Corrupt', async (t) => {
  const dir = tempDir(t);
  const img = await smallQcow2(dir);
  const fh = await open(img, 'r');
  const head = Buffer.alloc(48);
  await fh.read(head, 0, 48, 0);
  await fh.close();
  const l1Offset = Number(head.readBigUInt64BE(40));
  await patch(img, l1Offset, be64(0x8000000000000000n | (1n << 40n)));
  await assertFails(t, img, 'Corrupt', /L1 entry 0 .* past the end/);
});

test('a qcow2 L2 entry pointing past the end of the file fails the read with Corrupt', async (t) => {
  const dir = tempDir(t);
  const img = await smallQcow2(dir);
  const fh = await open(img, 'r');
  const head = Buffer.alloc(48);
  await fh.read(head, 0, 48, 0);
  const l1 = Buffer.alloc(8);
  await fh.read(l1, 0, 8, Number(head.readBigUInt64BE(40)));
  await fh.close();
  const l2Offset = Number(l1.readBigUInt64BE(0) & 0x00fffffffffffe00n);
  await patch(img, l2Offset + 8, be64(0x8000000000000000n | (1n << 36n)));
  await assertFails(t, img, 'Corrupt', /data cluster .* past the end/);
});

test('two qcow2 images backing each other are a loop error, not a hang', async (t) => {
  const dir = tempDir(t);
  await qemuImg('create', '-f', 'qcow2', join(dir, 'a.qcow2'), '4M');
  await qemuImg('create', '-f', 'qcow2', '-b', 'a.qcow2', '-F', 'qcow2', join(dir, 'b.qcow2'));
  // An unsafe rebase rewrites only the header: a now names b as its backing file.
  await qemuImg('rebase', '-u', '-f', 'qcow2', '-b', 'b.qcow2', '-F', 'qcow2', join(dir, 'a.qcow2'));
  await assertFails(t, join(dir, 'b.qcow2'), 'InvalidInput', /backing chain loops/, 'qcow2');
});

test('a backing chain deeper than 16 images is refused', async (t) => {
  const dir = tempDir(t);
  await qemuImg('create', '-f', 'qcow2', join(dir, 'l0.qcow2'), '1M');
  for (let i = 1; i <= 17; i++)
    await qemuImg(
      'create',
      '-f',
      'qcow2',
      '-u',
      '-b',
      `l${i - 1}.qcow2`,
      '-F',
      'qcow2',
      join(dir, `l${i}.qcow2`),
      '1M',
    );
  await assertFails(t, join(dir, 'l17.qcow2'), 'InvalidInput', /deeper than 16/, 'qcow2');
  const ok = await openContainer(join(dir, 'l15.qcow2'), 'qcow2');
  t.is(ok?.size, 1024 * 1024, 'a chain of 16 images still opens');
  await ok?.close();
});

test('qcow2 headers with absurd values are refused: size over 64 TiB, cluster bits, too small L1, bad version', async (t) => {
  const dir = tempDir(t);
  const huge = await smallQcow2(dir, 'huge.qcow2');
  await patch(huge, 24, be64(1n << 47n));
  await assertFails(t, huge, 'InvalidInput', /exceeds 64 TiB/);
  const bits = await smallQcow2(dir, 'bits.qcow2');
  await patch(bits, 20, be32(31));
  await assertFails(t, bits, 'Corrupt', /cluster_bits 31/);
  const l1 = await smallQcow2(dir, 'l1.qcow2');
  await patch(l1, 24, be64(1n << 40n)); // 1 TiB needs far more than the one L1 entry there
  await assertFails(t, l1, 'Corrupt', /L1 table .* needs/);
  const version = await smallQcow2(dir, 'v9.qcow2');
  await patch(version, 4, be32(9));
  await assertFails(t, version, 'InvalidInput', /version 9/);
});

/**
 * A one-cluster (64 KiB) zstd qcow2 whose only compressed cluster is replaced by `frame`, appended at the
 * end of the file: what a hostile image can put where qemu puts one frame of exactly one cluster.
 */
async function zstdQcow2WithFrame(dir: string, name: string, frame: Buffer): Promise<string> {
  const raw = join(dir, `${name}.raw`);
  await writeFile(raw, Buffer.alloc(65536, 0x41));
  const img = join(dir, `${name}.qcow2`);
  await qemuImg('convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', 'compression_type=zstd', raw, img);
  const f = await readFile(img);
  const l1Offset = Number(f.readBigUInt64BE(40));
  const l2Offset = Number(f.readBigUInt64BE(l1Offset) & 0x00fffffffffffe00n);
  if ((f.readBigUInt64BE(l2Offset) & (1n << 62n)) === 0n)
    throw new Error('qemu-img did not compress cluster 0');
  const host = Math.ceil(f.length / 512) * 512;
  const sectors = Math.ceil(frame.length / 512);
  const out = Buffer.alloc(host + sectors * 512);
  f.copy(out);
  frame.copy(out, host);
  // 64 KiB clusters: the count of sectors after the first is in bits 54..61, the host offset below.
  out.writeBigUInt64BE((1n << 62n) | (BigInt(sectors - 1) << 54n) | BigInt(host), l2Offset);
  await writeFile(img, out);
  return img;
}

test('a zstd cluster that declares or produces more than one cluster is Corrupt, never allocated', async (t) => {
  const dir = tempDir(t);
  // An 8 KiB frame that declares 256 MiB: before, the reader allocated all of it and kept the first cluster.
  const declared = await zstdQcow2WithFrame(dir, 'declared', compress(Buffer.alloc(256 * 1024 * 1024)));
  await assertFails(
    t,
    declared,
    'Corrupt',
    /compressed cluster at \d+ \(virtual offset 0\) in declared\.qcow2: zstd frame declares 268435456 bytes, expected 65536/,
  );
  // A frame without a declared size is streamed, and stopped once it passes one cluster.
  const unsized = await zstdQcow2WithFrame(
    dir,
    'unsized',
    compress(Buffer.alloc(1024 * 1024, 0x42), { contentSizeFlag: false }),
  );
  await assertFails(
    t,
    unsized,
    'Corrupt',
    /cluster at \d+ .* in unsized\.qcow2: zstd payload expands beyond 65536/,
  );
  const smaller = await zstdQcow2WithFrame(dir, 'smaller', compress(Buffer.alloc(4096, 0x43)));
  await assertFails(t, smaller, 'Corrupt', /zstd frame declares 4096 bytes, expected 65536/);
  // Exactly one cluster reads, declared or not.
  for (const contentSizeFlag of [true, false]) {
    const img = await zstdQcow2WithFrame(
      dir,
      `exact-${contentSizeFlag}`,
      compress(Buffer.alloc(65536, 0x44), { contentSizeFlag }),
    );
    const src = await openContainer(img);
    t.true((await readWhole(src!)).equals(Buffer.alloc(65536, 0x44)), `contentSizeFlag ${contentSizeFlag}`);
    await src?.close();
  }
});

test('a dynamic VHD whose BAT lies past the end, or a damaged footer, fails with Corrupt', async (t) => {
  const dir = tempDir(t);
  const img = join(dir, 'd.vhd');
  await qemuImg('create', '-f', 'vpc', '-o', 'subformat=dynamic', img, '64M');
  await sh('qemu-io', ['-f', 'vpc', '-c', 'write -P 0x41 3M 1M', img]);
  const copy = join(dir, 'cut.vhd');
  await sh('cp', [img, copy]);
  await truncate(copy, 1024 + 512); // footer copy and dynamic header survive, BAT and data do not
  await assertFails(t, copy, 'Corrupt', /past the end/);
  await patch(img, 0, Buffer.from('conectiy'));
  await patch(img, fileSize(img) - 512 + 40, be64(1n << 50n)); // footer changed: checksum no longer matches
  await assertFails(t, img, 'Corrupt', /checksum/);
});

test('VDI and VMDK headers with absurd sizes or tables past the end are refused', async (t) => {
  const dir = tempDir(t);
  const vdi = join(dir, 'x.vdi');
  await qemuImg('create', '-f', 'vdi', vdi, '8M');
  const sizeField = Buffer.alloc(8);
  sizeField.writeBigUInt64LE(1n << 50n);
  await patch(vdi, 368, sizeField);
  await assertFails(t, vdi, 'InvalidInput', /exceeds 64 TiB/);
  const vdi2 = join(dir, 'y.vdi');
  await qemuImg('create', '-f', 'vdi', vdi2, '8M');
  await patch(vdi2, 340, le32(0x7fffff00));
  await assertFails(t, vdi2, 'Corrupt', /block map .* past the end/);
  const vmdk = join(dir, 'x.vmdk');
  await qemuImg('create', '-f', 'vmdk', vmdk, '8M');
  const gd = Buffer.alloc(8);
  gd.writeBigUInt64LE(1n << 30n);
  await patch(vmdk, 56, gd);
  await assertFails(t, vmdk, 'Corrupt', /grain directory .* past the end/);
});

test('random garbage after a valid magic never crashes or hangs the reader', async (t) => {
  const dir = tempDir(t);
  const magics: [string, Buffer, number][] = [
    ['g.qcow2', Buffer.from([0x51, 0x46, 0x49, 0xfb]), 0],
    ['g.vmdk', Buffer.from('KDMV'), 0],
    ['g.vhd', Buffer.from('conectix'), 0],
    ['g.vdi', le32(0xbeda107f), 64],
  ];
  for (let round = 0; round < 8; round++) {
    for (const [name, magic, at] of magics) {
      const path = join(dir, `${round}-${name}`);
      const body = Buffer.alloc(64 * 1024);
      for (let i = 0; i < body.length; i++) body[i] = (i * 2654435761 + round * 97) >>> 24;
      if (name.endsWith('.vdi')) body.write('<<< ', 0, 'latin1');
      magic.copy(body, at);
      const { writeFile } = await import('node:fs/promises');
      await writeFile(path, body);
      const err = await t.throwsAsync(async () => {
        const src = await openContainer(path);
        try {
          if (src) await sha256Source(src, 4 * 1024 * 1024);
        } finally {
          await src?.close();
        }
      });
      t.true(
        ['Corrupt', 'InvalidInput', 'NotFound'].includes((err as { code?: string }).code ?? ''),
        `${name}: ${err?.message}`,
      );
    }
  }
});
