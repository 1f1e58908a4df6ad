/**
 * `npm run bench:storage-layout -- [--objects N] [--mean-kib S] [--rounds K]`: what storing a first backup's
 * chunks costs the server's process on local storage, one object per chunk (the repository's layout) against
 * the same bytes in 16 MiB pack objects (as restic and borg store), with nothing else running.
 *
 * A first backup of the 2 GiB workload stores about 1,150 chunks of 640 KiB on average (735 MB), the
 * defaults here. Each mode stores the same objects through the real local adapter (temp file, write, fsync,
 * rename, fsync of the folder: the same crash-safe put the repository makes):
 *   - `one folder level, new`: one object per chunk under `chunks/ab/<name>` (the layout of new
 *     repositories, stored-objects.ts), into an empty root, so the first puts also create the 256 folders;
 *   - `one folder level, exist`: the same, with the 256 folders made beforehand (untimed);
 *   - `two folder levels, new`: one object per chunk under `chunks/ab/cd/<name>` (repositories whose config
 *     names no fanout), into an empty root, so most puts also create a folder, as a first backup did;
 *   - `two folder levels, exist`: the same, with every folder made beforehand (untimed), as in such a
 *     repository that has stored tens of thousands of chunks;
 *   - `16 MiB packs`: the same bytes, consecutive objects joined into one put per 16 MiB.
 * The modes take turns in each round (a drift of the machine's speed falls on all of them) and the page
 * cache's dirty data is written out (`sync`) before each. CPU is the process's user + system time, all of
 * its threads (node's file-system thread pool does the puts).
 *
 * Prints each round and the medians; writes them to bench/results/storage-layout-<time>.json.
 * Environment: DV_BENCH_WORK, as for `npm run bench` (the objects are written under it).
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { type ChunkFanout, chunkKeyOfName } from '../repo-engine/stored-objects.js';
import { openLocalStorage } from '../storage-adapters/local.js';
import { forEachLimited } from './lib/for-each-limited.js';
import { median } from './lib/measure.js';
import { PACK_BYTES, packsOf, workloadOf } from './lib/storage-layout.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const work = process.env.DV_BENCH_WORK ?? join(root, 'bench', '.work');
/** The agent keeps this many chunk uploads in flight by default, so the server runs as many puts at once. */
const OBJECT_CONCURRENCY = 8;
/** A pack writer fills the next pack while the last one is written out. */
const PACK_CONCURRENCY = 2;

type Mode =
  | 'one folder level, new'
  | 'one folder level, exist'
  | 'two folder levels, new'
  | 'two folder levels, exist'
  | '16 MiB packs';
const MODES: Mode[] = [
  'one folder level, new',
  'one folder level, exist',
  'two folder levels, new',
  'two folder levels, exist',
  '16 MiB packs',
];
const FANOUT: Record<Exclude<Mode, '16 MiB packs'>, ChunkFanout> = {
  'one folder level, new': 1,
  'one folder level, exist': 1,
  'two folder levels, new': 2,
  'two folder levels, exist': 2,
};

interface Timing {
  wallSeconds: number;
  cpuSeconds: number;
}

function parse(): { objects: number; meanKiB: number; rounds: number } {
  const { values } = parseArgs({
    options: {
      objects: { type: 'string', default: '1150' },
      'mean-kib': { type: 'string', default: '640' },
      rounds: { type: 'string', default: '3' },
    },
  });
  const objects = Number(values.objects);
  const meanKiB = Number(values['mean-kib']);
  const rounds = Number(values.rounds);
  if (!Number.isInteger(objects) || objects < 1 || objects > 100_000)
    throw new Error('--objects takes 1..100000');
  if (!Number.isInteger(meanKiB) || meanKiB < 4 || meanKiB > 8192)
    throw new Error('--mean-kib takes 4..8192');
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > 50) throw new Error('--rounds takes 1..50');
  return { objects, meanKiB, rounds };
}

async function storeOnce(
  mode: Mode,
  dir: string,
  names: string[],
  sizes: number[],
  data: Buffer,
  packBuffers: Buffer[],
): Promise<Timing> {
  const storage = await openLocalStorage(dir);
  try {
    if (mode === 'one folder level, exist' || mode === 'two folder levels, exist') {
      const fanout = FANOUT[mode];
      for (const name of names)
        await mkdir(dirname(join(dir, chunkKeyOfName(name, fanout))), { recursive: true });
    }
    execFileSync('sync');
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    if (mode === '16 MiB packs') {
      const packs = packsOf(sizes);
      let nextPack = 0;
      await Promise.all(
        packBuffers.map(async (buffer) => {
          while (nextPack < packs.length) {
            const members = packs[nextPack++];
            let at = 0;
            for (const i of members) at += data.copy(buffer, at, 0, sizes[i]);
            const first = names[members[0]];
            await storage.put(`packs/${first.slice(0, 2)}/${first}`, buffer.subarray(0, at));
          }
        }),
      );
    } else {
      const fanout = FANOUT[mode];
      await forEachLimited(names.length, OBJECT_CONCURRENCY, (i) =>
        storage.put(chunkKeyOfName(names[i], fanout), data.subarray(0, sizes[i])),
      );
    }
    const wallSeconds = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    return { wallSeconds, cpuSeconds: (cpu.user + cpu.system) / 1e6 };
  } finally {
    await storage.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

const { objects, meanKiB, rounds } = parse();
const { names, sizes } = workloadOf(objects, meanKiB);
const totalBytes = sizes.reduce((a, b) => a + b, 0);
// Incompressible bytes, one buffer every object is a slice of: what is measured is storing, not making data.
const payload = randomBytes(Math.max(...sizes));
// A pack writer gathers its chunks into buffers of its own as they arrive (the copy is part of its cost),
// kept for the life of the server: made and touched once here, untimed, as a server does at its first packs.
const packBuffers = Array.from({ length: PACK_CONCURRENCY }, () => Buffer.alloc(PACK_BYTES + payload.length));
const scratch = join(work, 'storage-layout');
mkdirSync(scratch, { recursive: true });
console.log(
  `${objects} objects of ${meanKiB} KiB on average, ${(totalBytes / 1e6).toFixed(0)} MB, ${rounds} rounds, local storage under ${scratch}`,
);
const byMode = new Map<Mode, Timing[]>(MODES.map((m) => [m, []]));
for (let round = 0; round < rounds; round++) {
  // Each round starts with another mode, so no mode always runs first on a machine that is warming up.
  const order = MODES.map((_, i) => MODES[(i + round) % MODES.length]);
  for (const mode of order) {
    const t = await storeOnce(mode, join(scratch, `round-${round}`), names, sizes, payload, packBuffers);
    byMode.get(mode)?.push(t);
    console.log(
      `round ${round + 1}  ${mode.padEnd(24)} wall ${t.wallSeconds.toFixed(2)} s  CPU ${t.cpuSeconds.toFixed(2)} s`,
    );
  }
}
const gib = totalBytes / 1024 ** 3;
console.log('\nmedians                         wall      CPU   CPU per GiB stored');
const summary = MODES.map((mode) => {
  const ts = byMode.get(mode) ?? [];
  const wallSeconds = median(ts.map((t) => t.wallSeconds));
  const cpuSeconds = median(ts.map((t) => t.cpuSeconds));
  console.log(
    `${mode.padEnd(30)} ${wallSeconds.toFixed(2).padStart(6)} s ${cpuSeconds.toFixed(2).padStart(6)} s ${(cpuSeconds / gib).toFixed(2).padStart(8)} s`,
  );
  return { mode, wallSeconds, cpuSeconds, cpuSecondsPerGiB: cpuSeconds / gib, runs: ts };
});
const date = new Date().toISOString();
const out = join(root, 'bench', 'results', `storage-layout-${date.replace(/[:.]/g, '-')}.json`);
writeFileSync(out, `${JSON.stringify({ date, objects, meanKiB, bytes: totalBytes, summary }, null, 2)}\n`);
console.log(`\nwritten to ${out}`);
