/**
 * `npm run bench:paired -- [--night N] [--pairs K]`: one backup step, diskvault against restic, in K pairs.
 *
 * One run of `npm run bench` varies by up to 20 % from the next for every tool, which is more than the
 * margin of a target like "first-backup CPU ≤ 0.75 × restic's". Here the two tools take turns (diskvault
 * first in odd pairs, restic first in even ones) on fresh repositories, so a drift of the machine's speed
 * falls on both, and the median of the pairs' ratios is the figure. Night N (default 0, the first backup) is
 * timed after nights 0..N-1 were backed up untimed into the same repository. The image is read into the page
 * cache before each timed step, as in the main benchmark.
 *
 * Prints each pair and the medians; writes them to bench/results/paired-<time>.json.
 * Environment: DV_BENCH_WORK, as for `npm run bench`.
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { diskvault } from './lib/diskvault.js';
import { intoPageCache, median } from './lib/measure.js';
import { ensurePeerTools, type Peer, type PeerStep, restic } from './lib/peers.js';
import { ensureWorkload } from './lib/workload.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const work = process.env.DV_BENCH_WORK ?? join(root, 'bench', '.work');

interface Side {
  wall: number;
  /** The agent's (or restic's) user + system seconds. */
  agentCpu: number;
  /** The server's CPU seconds during the step; 0 for restic. */
  serverCpu: number;
}

interface Pair {
  diskvault: Side;
  restic: Side;
  /** diskvault's agent + server CPU over restic's CPU. */
  cpuRatio: number;
  agentCpuRatio: number;
  wallRatio: number;
}

function parse(): { night: number; pairs: number } {
  const { values } = parseArgs({
    options: { night: { type: 'string', default: '0' }, pairs: { type: 'string', default: '5' } },
  });
  const night = Number(values.night);
  const pairs = Number(values.pairs);
  if (!Number.isInteger(night) || night < 0 || night > 3) throw new Error('--night takes 0..3');
  if (!Number.isInteger(pairs) || pairs < 1 || pairs > 50) throw new Error('--pairs takes 1..50');
  return { night, pairs };
}

/** Backs up nights 0..night-1 untimed, then times `night`; `serverCpu` reads the server's CPU so far. */
async function timedNight(
  peer: Peer,
  images: string[],
  night: number,
  serverCpu: () => number,
): Promise<Side> {
  await peer.init();
  for (let n = 0; n < night; n++) await peer.backup(images[n], n);
  await intoPageCache(images[night]);
  const before = serverCpu();
  const step: PeerStep = await peer.backup(images[night], night);
  return { wall: step.m.wallSeconds, agentCpu: step.m.cpuSeconds, serverCpu: serverCpu() - before };
}

async function diskvaultSide(images: string[], night: number): Promise<Side> {
  const dir = join(work, 'paired', 'diskvault');
  const dv = diskvault(dir);
  try {
    return await timedNight(dv, images, night, () => dv.serverUsage().cpuSeconds);
  } finally {
    await dv.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function resticSide(images: string[], night: number): Promise<Side> {
  const dir = join(work, 'paired', 'restic');
  try {
    return await timedNight(restic(dir), images, night, () => 0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function spread(name: string, xs: number[]): string {
  return `${name} ${median(xs).toFixed(3)} (${Math.min(...xs).toFixed(3)}–${Math.max(...xs).toFixed(3)})`;
}

async function main(): Promise<void> {
  const { night, pairs } = parse();
  ensurePeerTools();
  const images = await ensureWorkload(work, 3, '2G');
  mkdirSync(join(work, 'paired'), { recursive: true });
  const results: Pair[] = [];
  process.stderr.write(`backup night${night}, diskvault against restic, ${pairs} pairs\n`);
  for (let i = 0; i < pairs; i++) {
    let dv: Side;
    let rs: Side;
    if (i % 2 === 0) {
      dv = await diskvaultSide(images, night);
      rs = await resticSide(images, night);
    } else {
      rs = await resticSide(images, night);
      dv = await diskvaultSide(images, night);
    }
    const pair: Pair = {
      diskvault: dv,
      restic: rs,
      cpuRatio: (dv.agentCpu + dv.serverCpu) / rs.agentCpu,
      agentCpuRatio: dv.agentCpu / rs.agentCpu,
      wallRatio: dv.wall / rs.wall,
    };
    results.push(pair);
    process.stderr.write(
      `  pair ${i + 1}: diskvault ${dv.wall.toFixed(2)} s wall, CPU agent ${dv.agentCpu.toFixed(2)} + server ${dv.serverCpu.toFixed(2)} s; restic ${rs.wall.toFixed(2)} s wall, CPU ${rs.agentCpu.toFixed(2)} s; ratios CPU ${pair.cpuRatio.toFixed(3)}, agent CPU ${pair.agentCpuRatio.toFixed(3)}, wall ${pair.wallRatio.toFixed(3)}\n`,
    );
  }
  const summary = [
    spread(
      'CPU (agent + server) / restic',
      results.map((p) => p.cpuRatio),
    ),
    spread(
      'agent CPU / restic',
      results.map((p) => p.agentCpuRatio),
    ),
    spread(
      'wall / restic',
      results.map((p) => p.wallRatio),
    ),
  ];
  process.stdout.write(
    `backup night${night}, median of ${pairs} pairs (min–max):\n  ${summary.join('\n  ')}\n`,
  );
  const date = new Date().toISOString();
  const out = join(root, 'bench', 'results', `paired-${date.replace(/[:.]/g, '-')}.json`);
  writeFileSync(out, `${JSON.stringify({ date, night, pairs: results }, null, 2)}\n`);
  process.stdout.write(`written to ${out}\n`);
}

await main();
