/**
 * `npm run bench`: diskvault beside restic and BorgBackup on the same machine, the same images, in one run.
 * Prints a table with ratios and writes everything to bench/results/<time>.json. See docs/performance.md.
 *
 * Environment: DV_BENCH_WORK (where workloads and repositories live; default bench/.work),
 * DV_BENCH_SKIP (comma list of sections to skip: plaintext, e2e, peers, s3, chunker, large).
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, createReadStream, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DEFAULT_CHUNKER } from '../repo-engine/config.js';
import { type DiskvaultPeer, diskvault, type S3Target } from './lib/diskvault.js';
import { floorOfWorkload } from './lib/floor.js';
import { intoPageCache } from './lib/measure.js';
import { borg, ensurePeerTools, type Peer, type PeerStep, restic } from './lib/peers.js';
import {
  cpuTable,
  fastestPeerTable,
  floorTable,
  pairTable,
  type Row,
  resticTargets,
  withServerStepCpu,
} from './lib/report.js';
import { ensureWorkload } from './lib/workload.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const work = process.env.DV_BENCH_WORK ?? join(root, 'bench', '.work');
const skip = new Set((process.env.DV_BENCH_SKIP ?? '').split(',').filter(Boolean));
const started = Date.now();

const rows: Row[] = [];
const checks: { what: string; ok: boolean; detail: string }[] = [];

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const piece of createReadStream(path, { highWaterMark: 8 << 20 })) h.update(piece as Buffer);
  return h.digest('hex');
}

function record(tool: string, s: PeerStep, server?: DiskvaultPeer, extra?: Record<string, unknown>): void {
  const usage = server?.serverUsage();
  rows.push({
    tool,
    step: s.step,
    wall: s.m.wallSeconds,
    cpu: s.m.cpuSeconds,
    userCpu: s.m.userSeconds,
    systemCpu: s.m.systemSeconds,
    rssMiB: s.m.peakRssMiB,
    serverRssMiB: usage?.peakRssMiB,
    serverCpu: usage?.cpuSeconds,
    repoMiB: s.repoBytes !== undefined && Number.isFinite(s.repoBytes) ? s.repoBytes / 2 ** 20 : undefined,
    extra,
  });
  const serverText = usage ? `, server ${usage.peakRssMiB.toFixed(0)} MiB` : '';
  const stepRow = withServerStepCpu(rows.filter((r) => r.tool === tool)).at(-1);
  const serverCpuText =
    stepRow?.serverStepCpu !== undefined ? ` + server ${stepRow.serverStepCpu.toFixed(2)} s` : '';
  process.stderr.write(
    `  ${tool.padEnd(14)} ${s.step.padEnd(36)} ${s.m.wallSeconds.toFixed(2)} s wall, cpu ${s.m.cpuSeconds.toFixed(2)} s${serverCpuText}, ${s.m.peakRssMiB.toFixed(0)} MiB${serverText}\n`,
  );
}

/** Backs up every night into a fresh repository; returns diskvault's snapshot ids (empty for a peer). */
async function backupNights(peer: Peer, images: string[], dv?: DiskvaultPeer): Promise<string[]> {
  await peer.init();
  const summaries: string[] = [];
  for (const [n, img] of images.entries()) {
    await intoPageCache(img);
    const s = await peer.backup(img, n);
    const sum = dv?.lastSummary;
    if (sum && typeof sum.snapshot === 'string') summaries.push(sum.snapshot);
    record(peer.name, s, dv, sum ? pick(sum, ['chunks', 'newChunks', 'bytesUploaded', 'size']) : undefined);
  }
  return summaries;
}

/** Restores the newest snapshot and checks it is the image, byte for byte. */
async function restoreChecked(
  peer: Peer,
  dir: string,
  night: number,
  original: string,
  dv?: DiskvaultPeer,
  round?: number,
): Promise<void> {
  const out = join(dir, 'restored.img');
  const r = await peer.restore(out, night);
  record(peer.name, r, dv, round === undefined ? undefined : { round });
  const same = (await sha256File(out)) === original;
  checks.push({
    what: `${peer.name} restore equals night${night}${round === undefined ? '' : ` (run ${round})`}`,
    ok: same,
    detail: same ? 'sha256 equal' : 'DIFFERS',
  });
  rmSync(out, { force: true });
}

/** Backs up every night, restores the last once, checks it (the sections outside the peer comparison). */
async function runPeer(
  peer: Peer,
  images: string[],
  dir: string,
  original: string,
  dv?: DiskvaultPeer,
): Promise<void> {
  await backupNights(peer, images, dv);
  await restoreChecked(peer, dir, images.length - 1, original, dv);
}

function pick(o: Record<string, unknown>, keys: string[]): Record<string, unknown> {
  return Object.fromEntries(keys.filter((k) => k in o).map((k) => [k, o[k]]));
}

async function startFakeS3Process(): Promise<{
  s3: S3Target & { directory?: string };
  stop(): Promise<void>;
}> {
  const child = spawn(process.execPath, [join(root, 'dist', 'bench', 'fake-s3-process.js')], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const line = await new Promise<string>((ok, fail) => {
    let buf = '';
    child.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      if (buf.includes('\n')) ok(buf.split('\n')[0]);
    });
    child.on('exit', (c) => fail(new Error(`fake S3 exited ${c}`)));
  });
  return {
    s3: JSON.parse(line) as S3Target,
    stop: async () => {
      const exited = new Promise((ok) => child.on('exit', ok));
      child.kill('SIGTERM');
      await exited;
    },
  };
}

/** The floor of every step (bench/lib/floor.ts), measured before any tool runs; printed beside diskvault's figures. */
let floor: Awaited<ReturnType<typeof floorOfWorkload>> | undefined;

function printTable(): string {
  const all = withServerStepCpu(rows);
  const lines = [
    'Wall time and CPU per side (agent: the measured command; server: its process during the step)',
    '',
  ];
  lines.push(
    ...cpuTable(all),
    '',
    'Each step against the fastest peer (restores: best of two, alternating order)',
    '',
  );
  lines.push(...fastestPeerTable(all));
  if (floor) {
    const imageGiB = (floor.nights[0]?.imageBytes ?? 2 ** 30) / 2 ** 30;
    lines.push('', ...floorTable(floor.floors, all, imageGiB));
  }
  const targets = resticTargets(all);
  if (targets.length > 0) lines.push('', 'CPU and size against restic', '', ...targets.map((t) => `- ${t}`));
  if (all.some((r) => r.tool === 'dv plaintext'))
    lines.push('', ...pairTable(all, 'diskvault', 'dv plaintext', '≤ 1.10'));
  if (all.some((r) => r.tool === 'dv end to end'))
    lines.push('', ...pairTable(all, 'dv end to end', 'diskvault', '≤ 1.10'));
  return lines.join('\n');
}

async function main(): Promise<void> {
  ensurePeerTools();
  const images = await ensureWorkload(work, 3, '2G');
  const original3 = await sha256File(images[3]);
  process.stderr.write('floor: the rates of the required primitives and the work of each night\n');
  floor = await floorOfWorkload(images, DEFAULT_CHUNKER, cpus().length);

  // Every tool backs up all nights first; the restores follow in alternating order (forward, then backward)
  // and the best of each tool's two counts, so no tool always restores into the page cache another left.
  const restorers: { peer: Peer; dir: string; dv?: DiskvaultPeer }[] = [];
  process.stderr.write('diskvault (local storage)\n');
  const dvDir = join(work, 'diskvault');
  const dv = diskvault(dvDir);
  const ids = await backupNights(dv, images, dv);
  restorers.push({ peer: dv, dir: dvDir, dv });

  // The same runs on a plaintext (format 1) repository: what encryption at rest costs, step by step.
  let plain: DiskvaultPeer | undefined;
  if (!skip.has('plaintext')) {
    process.stderr.write('diskvault plaintext (local storage)\n');
    const dir = join(work, 'diskvault-plaintext');
    plain = diskvault(dir, { name: 'dv plaintext', encryption: 'none' });
    await backupNights(plain, images, plain);
    restorers.push({ peer: plain, dir, dv: plain });
  }

  // The same runs end to end (backup and restore with --key), on the default encrypted repository: what
  // end-to-end keys cost on top of encryption at rest.
  let e2e: DiskvaultPeer | undefined;
  if (!skip.has('e2e')) {
    process.stderr.write('diskvault end to end (local storage)\n');
    const dir = join(work, 'diskvault-e2e');
    e2e = diskvault(dir, { name: 'dv end to end', e2e: true });
    await backupNights(e2e, images, e2e);
    restorers.push({ peer: e2e, dir, dv: e2e });
  }

  if (!skip.has('peers')) {
    for (const peer of [
      restic(join(work, 'restic')),
      borg(join(work, 'borg-lz4'), 'lz4'),
      borg(join(work, 'borg-zstd'), 'zstd'),
    ]) {
      process.stderr.write(`${peer.name}\n`);
      await backupNights(peer, images);
      restorers.push({ peer, dir: join(work, peer.name.replace(' ', '-')) });
    }
  }

  process.stderr.write('restores\n');
  for (const round of [1, 2]) {
    const order = round === 1 ? restorers : [...restorers].reverse();
    for (const r of order) await restoreChecked(r.peer, r.dir, images.length - 1, original3, r.dv, round);
  }

  // In place: a disk that holds night2 is brought to night3, fetching only what differs.
  const target = join(dvDir, 'inplace.img');
  copyFileSync(images[2], target);
  const inPlace = await dv.inPlaceRestore(ids[3], target);
  record(
    'diskvault',
    inPlace,
    dv,
    dv.lastSummary ? pick(dv.lastSummary, ['bytesFetched', 'bytesReused']) : undefined,
  );
  checks.push({
    what: 'in-place restore equals night3',
    ok: (await sha256File(target)) === original3,
    detail: '',
  });
  // An unchanged disk: in place over itself should cost no more than reading it.
  const unchanged = await dv.inPlaceRestore(ids[3], target);
  record('diskvault', { ...unchanged, step: 'in-place restore, disk unchanged' }, dv);
  await dv.stop();
  await plain?.stop();
  await e2e?.stop();
  rmSync(target, { force: true });

  if (!skip.has('s3')) {
    process.stderr.write('diskvault (fake S3)\n');
    const fake = await startFakeS3Process();
    try {
      const dir = join(work, 'diskvault-s3');
      const dvs3 = diskvault(dir, { s3: fake.s3 });
      await runPeer(dvs3, images, dir, original3, dvs3);
      await dvs3.stop();
    } finally {
      await fake.stop();
    }
  }

  if (!skip.has('chunker')) {
    for (const avg of [256 << 10, 512 << 10, 4 << 20]) {
      const name = `dv avg ${avg >> 10}K`;
      process.stderr.write(`${name}\n`);
      const dir = join(work, `chunker-${avg}`);
      const peer = diskvault(dir, { name, chunkAvg: avg });
      await runPeer(peer, images, dir, original3, peer);
      await peer.stop();
    }
  }

  if (!skip.has('large')) {
    const large = await ensureWorkload(work, 1, '8G');
    process.stderr.write('diskvault 8 GiB\n');
    const dir = join(work, 'diskvault-8g');
    const big = diskvault(dir, { name: 'diskvault 8G' });
    await runPeer(big, large, dir, await sha256File(large[1]), big);
    await big.stop();
  }

  const table = printTable();
  const result = {
    date: new Date().toISOString(),
    machine: {
      cpus: cpus().length,
      model: cpus()[0]?.model,
      memGiB: totalmem() / 2 ** 30,
      node: process.version,
    },
    seconds: (Date.now() - started) / 1000,
    floor,
    rows,
    checks,
  };
  mkdirSync(join(root, 'bench', 'results'), { recursive: true });
  const file = join(root, 'bench', 'results', `${result.date.replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
  process.stdout.write(
    `${table}\n\nchecks:\n${checks.map((c) => `  ${c.ok ? 'ok  ' : 'FAIL'} ${c.what} ${c.detail}`).join('\n')}\n`,
  );
  process.stdout.write(`\nwritten to ${file} (${result.seconds.toFixed(0)} s)\n`);
  if (checks.some((c) => !c.ok)) process.exitCode = 1;
}

await main().catch((err: unknown) => {
  process.stderr.write(`bench failed: ${(err as Error)?.message ?? String(err)}\n`);
  process.exitCode = 1;
});
