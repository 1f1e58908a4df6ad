/**
 * `node dist/bench/formats.js [RAW_IMAGE]`: read throughput of each container reader against reading the
 * raw image itself, on the same disk. Each container is made from RAW_IMAGE with qemu-img (cached next to
 * it under os.tmpdir()), then read start to end in 32 MiB windows, (a) read only and (b) read + FastCDC
 * (256 KiB/1 MiB/4 MiB) + SHA-256 per chunk on one thread — the agent's per-byte work — best of 3 runs.
 * Default image: night0 of the benchmark's 2 GiB workload if `npm run bench` built it (under DV_BENCH_WORK,
 * default bench/.work), else the 64 MiB formats test image.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import fastcdc from 'fastcdc-wasm';
import { openContainer } from '../agent/formats/index.js';
import type { ImageSource } from '../agent/source.js';
import { workloadName } from '../workloads/cache.js';
import { benchWorkload } from './lib/workload.js';

const WINDOW = 32 * 1024 * 1024;
const benchWork = process.env.DV_BENCH_WORK ?? fileURLToPath(new URL('../../bench/.work', import.meta.url));
const raw =
  process.argv[2] ??
  [
    join(benchWork, workloadName(benchWorkload(3, '2G')), 'night0.img'),
    join(tmpdir(), 'diskvault-formats-base-v3.raw'),
  ].find(existsSync);
if (!raw) {
  process.stderr.write('no image: give a raw image path (e.g. a night0.img the benchmark built)\n');
  process.exit(2);
}

async function openRaw(path: string): Promise<ImageSource> {
  const fh = await open(path, 'r');
  const size = (await fh.stat()).size;
  return {
    size,
    sectorSize: 512,
    format: 'raw',
    seekable: true,
    async read(buf, offset) {
      const n = Math.min(buf.length, size - offset);
      let done = 0;
      while (done < n) {
        const { bytesRead } = await fh.read(buf, done, n - done, offset + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
      return done;
    },
    close: () => fh.close(),
  };
}

/** Reads the whole disk; with `chunk`, also cuts and hashes it (carrying the tail across windows). */
async function pass(src: ImageSource, chunk: boolean): Promise<number> {
  const buf = Buffer.allocUnsafe(WINDOW + 4 * 1024 * 1024);
  let carry = 0;
  let pos = 0;
  const t0 = performance.now();
  for (;;) {
    const n = await src.read(buf.subarray(carry, carry + WINDOW), pos);
    pos += n;
    const have = carry + n;
    if (!chunk) {
      if (n === 0) break;
      continue;
    }
    if (have === 0) break;
    const cuts = fastcdc.get_chunks(buf.subarray(0, have), 256 * 1024, 1024 * 1024, 4 * 1024 * 1024);
    // The last piece is cut by the window, not the content: keep it for the next window unless at the end.
    const last = n === 0 ? cuts.length - 1 : cuts.length - 2;
    for (let i = 1; i <= last; i++)
      createHash('sha256')
        .update(buf.subarray(cuts[i - 1], cuts[i]))
        .digest();
    const keepFrom = n === 0 ? have : cuts[Math.max(0, last)];
    buf.copy(buf, 0, keepFrom, have);
    carry = have - keepFrom;
    if (n === 0) break;
  }
  return (performance.now() - t0) / 1000;
}

/** Best of 3 for the variant and for raw, interleaved so that both see the same machine load. */
async function bestAgainstRaw(
  make: () => Promise<ImageSource>,
  chunk: boolean,
): Promise<{ seconds: number; raw: number; size: number }> {
  let seconds = Number.POSITIVE_INFINITY;
  let rawSeconds = Number.POSITIVE_INFINITY;
  let size = 0;
  for (let i = 0; i < 3; i++) {
    const rawSrc = await openRaw(raw as string);
    rawSeconds = Math.min(rawSeconds, await pass(rawSrc, chunk));
    await rawSrc.close();
    const src = await make();
    size = src.size ?? 0;
    seconds = Math.min(seconds, await pass(src, chunk));
    await src.close();
  }
  return { seconds, raw: rawSeconds, size };
}

const variants: [string, string[], string][] = [
  ['qcow2', ['-O', 'qcow2'], 'qcow2'],
  ['qcow2 (compressed)', ['-c', '-O', 'qcow2'], 'qcow2'],
  ['vmdk (monolithicSparse)', ['-O', 'vmdk'], 'vmdk'],
  ['vhd (dynamic)', ['-O', 'vpc', '-o', 'subformat=dynamic,force_size=on'], 'vhd'],
  ['vdi (dynamic)', ['-O', 'vdi'], 'vdi'],
];

const mib = (bytes: number, s: number) => `${(bytes / s / 2 ** 20).toFixed(0)} MiB/s`;
const cell = (r: { seconds: number; raw: number; size: number }) =>
  `${r.seconds.toFixed(2)} s (raw ${r.raw.toFixed(2)} s) ${(r.seconds / r.raw).toFixed(2)}x`.padStart(30);
process.stdout.write(
  `image ${raw} (${(statSync(raw).size / 2 ** 30).toFixed(2)} GiB); best of 3, interleaved with raw\n`,
);
process.stdout.write(
  `${'format'.padEnd(26)} ${'read only'.padStart(30)} ${'read + FastCDC + SHA-256'.padStart(30)}  read throughput\n`,
);
for (const [name, args, ext] of variants) {
  if (process.env.DV_BENCH_FORMATS && !process.env.DV_BENCH_FORMATS.split(',').includes(ext)) continue;
  const path = join(tmpdir(), `dv-bench-${basename(raw)}-${name.replace(/\W+/g, '-')}.${ext}`);
  if (!existsSync(path) || statSync(path).mtimeMs < statSync(raw).mtimeMs) {
    execFileSync('qemu-img', ['convert', '-f', 'raw', ...args, raw, path]);
  }
  const opener = async () => (await openContainer(path)) as ImageSource;
  const read = await bestAgainstRaw(opener, false);
  const chunk = process.env.DV_BENCH_NO_CDC ? null : await bestAgainstRaw(opener, true);
  process.stdout.write(
    `${name.padEnd(26)} ${cell(read)} ${chunk ? cell(chunk) : '-'.padStart(30)}  ${mib(read.size, read.seconds)}\n`,
  );
}
