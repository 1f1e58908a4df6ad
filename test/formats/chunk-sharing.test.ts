import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import fastcdc from 'fastcdc-wasm';
import { openContainer } from '../../agent/formats/index.js';
import { baseImage, qemuImg, readWhole, tempDir } from './support/images.js';

const MIN = 256 * 1024;
const AVG = 1024 * 1024;
const MAX = 4 * 1024 * 1024;

function chunkIds(image: Buffer): string[] {
  const cuts = fastcdc.get_chunks(image, MIN, AVG, MAX);
  const ids: string[] = [];
  for (let i = 1; i < cuts.length; i++) {
    ids.push(
      `${cuts[i - 1]}:${createHash('sha256')
        .update(image.subarray(cuts[i - 1], cuts[i]))
        .digest('hex')}`,
    );
  }
  return ids;
}

test('a disk read through compressed qcow2 and dynamic VHD containers chunks exactly like the raw disk', async (t) => {
  const dir = tempDir(t);
  const base = await baseImage();
  const rawIds = chunkIds(await readFile(base));
  t.true(rawIds.length > 20);
  const variants: [string, string[]][] = [
    ['c.qcow2', ['-c', '-O', 'qcow2']],
    ['d.vhd', ['-O', 'vpc', '-o', 'subformat=dynamic,force_size=on']],
  ];
  for (const [name, args] of variants) {
    const path = join(dir, name);
    await qemuImg('convert', '-f', 'raw', ...args, base, path);
    const src = await openContainer(path);
    const ids = chunkIds(await readWhole(src!));
    await src?.close();
    const shared = new Set(rawIds);
    const same = ids.filter((id) => shared.has(id)).length;
    t.is(same / rawIds.length, 1, `${name}: ${same}/${rawIds.length} chunks shared`);
    t.is(ids.length, rawIds.length, name);
  }
});
