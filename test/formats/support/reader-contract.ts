import { open } from 'node:fs/promises';
import type { ExecutionContext } from 'ava';
import { type ContainerFormat, openContainer } from '../../../agent/formats/index.js';
import { fileSize, qemuRaw, sha256File, sha256Source } from './images.js';

/**
 * What every container reader promises, checked against qemu's own reading of the same image: the same
 * size, the same bytes whole (read in backup-sized windows) and at awkward offsets, short reads only at the
 * end, and nothing past it. Each format's test file runs this once per image variant. `given` is the
 * --format the user would pass: images that open other files (backing chains, extents) are read only then.
 */
export async function assertReadsLikeQemu(
  t: ExecutionContext,
  image: string,
  qemuFormat: string,
  expectFormat: string,
  dir: string,
  given?: ContainerFormat,
): Promise<void> {
  const src = await openContainer(image, given);
  t.truthy(src, `${image} should be recognised as a container`);
  if (!src) return;
  try {
    t.is(src.format, expectFormat);
    t.true(src.seekable);
    const reference = await qemuRaw(image, qemuFormat, dir);
    const size = fileSize(reference);
    t.is(src.size, size, 'virtual size matches qemu');
    const whole = await sha256Source(src);
    t.is(whole.bytes, size);
    t.is(whole.sha256, await sha256File(reference), 'whole image matches qemu byte for byte');

    // Unaligned windows that start and end inside clusters, across block boundaries, and over the end.
    const ref = await open(reference, 'r');
    try {
      const probes: [number, number][] = [
        [0, 4096],
        [511, 70_000],
        [65_535, 3 * 1024 * 1024 + 7],
        [1024 * 1024 - 3, 2 * 1024 * 1024 + 11],
        [Math.floor(size / 2) + 123, 5 * 1024 * 1024],
        [size - 100_000, 200_000],
      ];
      for (const [offset, length] of probes) {
        const got = Buffer.alloc(length, 0x5a);
        const expect = Buffer.alloc(length);
        const n = await src.read(got, offset);
        const { bytesRead } = await ref.read(expect, 0, length, offset);
        t.is(n, Math.min(length, size - offset), `read length at ${offset}`);
        t.is(n, bytesRead);
        t.true(got.subarray(0, n).equals(expect.subarray(0, n)), `bytes at ${offset}+${length} match qemu`);
      }
      t.is(await src.read(Buffer.alloc(512), size), 0, 'nothing past the end');
    } finally {
      await ref.close();
    }
  } finally {
    await src.close();
  }
}
