/**
 * `npm run bench:server-ingest -- [--streams N] [--rounds K] [--baseline DIR]`: how fast one server takes in
 * first backups when it has the machine to itself (the agents run elsewhere), and with `--baseline DIR` the
 * same for the server of another checkout (built): a before and after for a change on the server's path,
 * without an agent's CPU on the same machine to blur it.
 *
 * The workload's night0 image is cut as the agent cuts it, and its non-zero chunks are compressed as the
 * agent compresses them (zstd level 1, raw when that saves under 3 %), once and untimed. Then, for each
 * server in turn (the order turns each round), a fresh `diskvault server` on an empty repository takes
 * those chunks over N chunk streams at once, one upload session each, as N agents backing up different
 * machines would send them (the chunks dealt out in turn, 16 unanswered per stream). This process only
 * writes prepared frames, so nearly all the CPU the machine has goes to the server.
 *
 * Prints each run and the medians: wall, raw MB/s, the server's CPU (user + system, all threads, from /proc;
 * its start before it listens is not counted) and this client's; writes them to
 * bench/results/server-ingest-<time>.json. Environment: DV_BENCH_WORK, as for `npm run bench`.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { ChunkStream } from '../agent/chunk-stream-client.js';
import { DiskvaultClient } from '../agent/client.js';
import { storedFormOfRaw } from '../repo-engine/chunk-format.js';
import { DEFAULT_CHUNKER } from '../repo-engine/config.js';
import { chunkEnds } from './lib/chunk-ends.js';
import { DISKVAULT, waitForListening } from './lib/diskvault.js';
import { median, processUsage } from './lib/measure.js';
import { ensureWorkload } from './lib/workload.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const work = process.env.DV_BENCH_WORK ?? join(root, 'bench', '.work');
/** Unanswered chunks per stream: twice the server's per-stream window, so the server never waits for us. */
const UNANSWERED = 16;

interface Upload {
  id: string;
  encoding: 'raw' | 'zstd';
  payload: Buffer;
  rawLength: number;
}

/** A server to measure: this checkout's, or another checkout's. */
interface Variant {
  label: string;
  command: string;
}

interface Run {
  variant: string;
  wallSeconds: number;
  rawMBps: number;
  serverCpuSeconds: number;
  clientCpuSeconds: number;
}

function parse(): { streams: number; variants: Variant[]; rounds: number } {
  const { values } = parseArgs({
    options: {
      streams: { type: 'string', default: '2' },
      rounds: { type: 'string', default: '3' },
      baseline: { type: 'string' },
    },
  });
  const streams = Number(values.streams);
  const rounds = Number(values.rounds);
  if (!Number.isInteger(streams) || streams < 1 || streams > 64) throw new Error('--streams takes 1..64');
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > 50) throw new Error('--rounds takes 1..50');
  const variants: Variant[] = [{ label: 'this checkout', command: DISKVAULT }];
  if (values.baseline)
    variants.push({ label: 'baseline', command: join(resolve(values.baseline), 'agent', 'diskvault') });
  return { streams, variants, rounds };
}

/** night0's distinct non-zero chunks in the form the agent uploads them. */
async function prepareUploads(image: string): Promise<Upload[]> {
  const file = await open(image, 'r');
  try {
    const size = (await file.stat()).size;
    const ends = await chunkEnds(file, size, DEFAULT_CHUNKER);
    const uploads = new Map<string, Upload>();
    let start = 0;
    for (const end of ends) {
      const raw = Buffer.allocUnsafe(end - start);
      await file.read(raw, 0, raw.length, start);
      start = end;
      if (raw.every((b) => b === 0)) continue;
      const id = createHash('sha256').update(raw).digest('hex');
      if (uploads.has(id)) continue;
      const form = storedFormOfRaw(raw);
      // The compressed form lies in a scratch buffer the next call reuses: keep a copy.
      const payload = form.encoding === 'zstd' ? Buffer.from(form.payload) : raw;
      uploads.set(id, { id, encoding: form.encoding, payload, rawLength: raw.length });
    }
    return [...uploads.values()];
  } finally {
    await file.close();
  }
}

async function startServer(dataDir: string, variant: Variant): Promise<{ child: ChildProcess; url: string }> {
  const child = spawn(variant.command, ['server', '--data', dataDir, '--listen', '127.0.0.1:0'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return { child, url: await waitForListening(child) };
}

/** Sends `uploads` over `stream`, at most UNANSWERED unanswered; every chunk must be stored as new. */
async function send(stream: ChunkStream, uploads: Upload[]): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: UNANSWERED }, async () => {
      while (next < uploads.length) {
        const u = uploads[next++] as Upload;
        const r = await stream.put(u.id, u.payload, u.encoding);
        if (!r.stored) throw new Error(`chunk ${u.id} was not stored as new`);
      }
    }),
  );
  await stream.end();
}

async function ingestOnce(variant: Variant, streams: number, uploads: Upload[]): Promise<Run> {
  const dataDir = await mkdtemp(join(work, 'server-ingest-'));
  const { child, url } = await startServer(dataDir, variant);
  try {
    const token = readFileSync(join(dataDir, 'admin.token'), 'utf8').trim();
    const api = new DiskvaultClient({ server: url, token });
    const opened: ChunkStream[] = [];
    for (let i = 0; i < streams; i++) {
      const session = await api.createSession(`ingest-${i}`, 'sda');
      const stream = await api.openChunkStream(session.id);
      if (!stream) throw new Error('the server offered no chunk stream');
      opened.push(stream);
    }
    const shares = opened.map((_, i) => uploads.filter((_, j) => j % streams === i));
    const server0 = processUsage(child.pid as number).cpuSeconds;
    const client0 = process.cpuUsage();
    const t0 = performance.now();
    await Promise.all(opened.map((stream, i) => send(stream, shares[i] as Upload[])));
    const wallSeconds = (performance.now() - t0) / 1000;
    const clientCpu = process.cpuUsage(client0);
    const rawBytes = uploads.reduce((n, u) => n + u.rawLength, 0);
    return {
      variant: variant.label,
      wallSeconds,
      rawMBps: rawBytes / 1e6 / wallSeconds,
      serverCpuSeconds: processUsage(child.pid as number).cpuSeconds - server0,
      clientCpuSeconds: (clientCpu.user + clientCpu.system) / 1e6,
    };
  } finally {
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await exited;
    await rm(dataDir, { recursive: true, force: true });
  }
}

const { streams, variants, rounds } = parse();
const [night0] = await ensureWorkload(work, 3, '2G');
const uploads = await prepareUploads(night0 as string);
const rawBytes = uploads.reduce((n, u) => n + u.rawLength, 0);
const sentBytes = uploads.reduce((n, u) => n + u.payload.length, 0);
console.log(
  `${uploads.length} chunks of night0: ${(rawBytes / 1e6).toFixed(0)} MB raw, ${(sentBytes / 1e6).toFixed(0)} MB sent; ${streams} streams at once; ${availableParallelism()} CPUs`,
);
const runs: Run[] = [];
for (let round = 0; round < rounds; round++) {
  // Each round starts with another variant, so none always runs first on a machine that is warming up.
  const order = variants.map((_, i) => variants[(i + round) % variants.length] as Variant);
  for (const variant of order) {
    const run = await ingestOnce(variant, streams, uploads);
    runs.push(run);
    console.log(
      `round ${round + 1}  ${variant.label}: wall ${run.wallSeconds.toFixed(2)} s  ${run.rawMBps.toFixed(0)} MB/s  server CPU ${run.serverCpuSeconds.toFixed(2)} s  client CPU ${run.clientCpuSeconds.toFixed(2)} s`,
    );
  }
}
console.log('\nmedians                     wall     MB/s  server CPU  client CPU');
const summary = variants.map(({ label }) => {
  const mine = runs.filter((r) => r.variant === label);
  const row = {
    variant: label,
    wallSeconds: median(mine.map((r) => r.wallSeconds)),
    rawMBps: median(mine.map((r) => r.rawMBps)),
    serverCpuSeconds: median(mine.map((r) => r.serverCpuSeconds)),
    clientCpuSeconds: median(mine.map((r) => r.clientCpuSeconds)),
  };
  console.log(
    `${label.slice(0, 24).padEnd(24)} ${row.wallSeconds.toFixed(2).padStart(6)} s ${row.rawMBps.toFixed(0).padStart(6)} ${row.serverCpuSeconds.toFixed(2).padStart(9)} s ${row.clientCpuSeconds.toFixed(2).padStart(9)} s`,
  );
  return row;
});
const date = new Date().toISOString();
const out = join(root, 'bench', 'results', `server-ingest-${date.replace(/[:.]/g, '-')}.json`);
writeFileSync(
  out,
  `${JSON.stringify({ date, cpus: availableParallelism(), streams, chunks: uploads.length, rawBytes, sentBytes, summary, runs }, null, 2)}\n`,
);
console.log(`\nwritten to ${out}`);
