/**
 * `npm run bench:floor`: the floor of every benchmark step on this machine (bench/lib/floor.ts), without
 * running any backup: the rates of the primitives the format requires, the work each night of the workload
 * asks for, and each step's floor in CPU seconds per side and wall seconds. About a minute on the 2 GiB set.
 *
 * Environment: DV_BENCH_WORK (where the workload lives; default bench/.work).
 */
import { cpus } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DEFAULT_CHUNKER } from '../repo-engine/config.js';
import { floorOfWorkload } from './lib/floor.js';
import { ensureWorkload } from './lib/workload.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const work = process.env.DV_BENCH_WORK ?? join(root, 'bench', '.work');

const images = await ensureWorkload(work, 3, '2G');
const { rates, nights, floors } = await floorOfWorkload(images, DEFAULT_CHUNKER, cpus().length);
const gb = (n: number) => `${(n / 1e9).toFixed(2)} GB/s`;
const mib = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;
process.stdout.write(
  [
    `rates (one core): read ${gb(rates.read)}, FastCDC ${gb(rates.fastcdc)}, SHA-256 ${gb(rates.sha256)}, zstd-1 ${gb(rates.zstdCompress)}, zstd decompress ${gb(rates.zstdDecompress)}, AES-256-GCM ${gb(rates.aesGcm)}`,
    '',
    '| night | image | non-zero | new raw | new stored | restore: distinct raw | restore: stored |',
    '|---|---|---|---|---|---|---|',
    ...nights.map(
      (w) =>
        `| ${w.night} | ${mib(w.imageBytes)} | ${mib(w.dataBytes)} | ${mib(w.newRawBytes)} | ${mib(w.newStoredBytes)} | ${mib(w.snapshotRawBytes)} | ${mib(w.snapshotStoredBytes)} |`,
    ),
    '',
    `| step | agent CPU s | server CPU s | total CPU s | wall s on ${cpus().length} cores |`,
    '|---|---|---|---|---|',
    ...floors.map(
      (f) =>
        `| ${f.step} | ${f.agent.toFixed(2)} | ${f.server.toFixed(2)} | ${(f.agent + f.server).toFixed(2)} | ${f.wall.toFixed(2)} |`,
    ),
    '',
  ].join('\n'),
);
