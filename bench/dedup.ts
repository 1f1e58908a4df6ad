/**
 * `npm run bench:dedup -- [--chunk-avg BYTES] [--levels 1,3] [--nights N] [--size 2G]`: what each night of
 * the benchmark workload adds to a repository, from the chunker and the compression level alone, with no
 * server and no agent: every image cut as the agent cuts it (bench/lib/chunk-ends.ts, the agent's own
 * window cutter), each non-zero chunk hashed, each chunk no earlier night had compressed at every level.
 *
 * It answers two questions the full benchmark cannot: how much of a night's stored data is the chunker's
 * doing (a change of a few KiB stores the whole chunk around it: compare `changed` with `new raw`) and what
 * another chunk size or level would store, in about a minute instead of a benchmark run with a repository
 * created for each choice. The agent's later-night shortcut (hashing last night's boundaries instead of
 * cutting) must store exactly what a whole cut stores; `npm run bench` prints what it did store, to compare.
 *
 * Chunker: min avg/4, max 4*avg, as `diskvault server --chunk-avg` makes it. Stored sizes are the chunk
 * payloads (zstd, or raw when that is not smaller), without the per-object header, encryption tag or
 * manifests. Writes bench/results/dedup-<time>.json.
 * Environment: DV_BENCH_WORK, as for `npm run bench`.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { compress } from 'zstd-napi';
import { isZero } from '../agent/backup/zero-runs.js';
import type { ChunkerParams } from '../repo-engine/manifest-codec.js';
import { chunkEnds } from './lib/chunk-ends.js';
import { changedBlockBytes, DedupLedger, type NightDedup } from './lib/dedup.js';
import { ensureWorkload } from './lib/workload.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const work = process.env.DV_BENCH_WORK ?? join(root, 'bench', '.work');
/** Images are compared in pieces of this size. */
const COMPARE_BYTES = 16 * 1024 * 1024;
/** A file system's block: what "changed" counts in. */
const BLOCK_BYTES = 4096;
const MiB = 1024 * 1024;

interface Options {
  chunker: ChunkerParams;
  levels: number[];
  nights: number;
  size: string;
}

function parse(): Options {
  const { values } = parseArgs({
    options: {
      'chunk-avg': { type: 'string', default: String(MiB) },
      levels: { type: 'string', default: '1,3' },
      nights: { type: 'string', default: '3' },
      size: { type: 'string', default: '2G' },
    },
  });
  const avg = Number(values['chunk-avg']);
  if (!Number.isInteger(avg) || avg < 16 * 1024 || avg > 16 * MiB || (avg & (avg - 1)) !== 0)
    throw new Error('--chunk-avg takes a power of two from 16384 to 16777216 bytes');
  const levels = values.levels.split(',').map(Number);
  if (levels.length === 0 || levels.some((l) => !Number.isInteger(l) || l < -5 || l > 19))
    throw new Error('--levels takes zstd levels from -5 to 19, separated by commas');
  const nights = Number(values.nights);
  if (!Number.isInteger(nights) || nights < 1 || nights > 30) throw new Error('--nights takes 1..30');
  return { chunker: { min: avg / 4, avg, max: avg * 4 }, levels, nights, size: values.size };
}

async function readFully(file: FileHandle, into: Buffer, position: number): Promise<void> {
  for (let filled = 0; filled < into.length; ) {
    const { bytesRead } = await file.read(into, filled, into.length - filled, position + filled);
    if (bytesRead === 0) throw new Error(`unexpected end of image at ${position + filled}`);
    filled += bytesRead;
  }
}

async function changedSince(previous: string, current: string, size: number): Promise<number> {
  const [a, b] = await Promise.all([open(previous, 'r'), open(current, 'r')]);
  try {
    const left = Buffer.alloc(COMPARE_BYTES);
    const right = Buffer.alloc(COMPARE_BYTES);
    let changed = 0;
    for (let at = 0; at < size; at += COMPARE_BYTES) {
      const n = Math.min(COMPARE_BYTES, size - at);
      await Promise.all([readFully(a, left.subarray(0, n), at), readFully(b, right.subarray(0, n), at)]);
      changed += changedBlockBytes(left.subarray(0, n), right.subarray(0, n), BLOCK_BYTES);
    }
    return changed;
  } finally {
    await Promise.all([a.close(), b.close()]);
  }
}

async function countNight(
  image: string,
  previous: string | undefined,
  ledger: DedupLedger,
  o: Options,
): Promise<NightDedup> {
  const file = await open(image, 'r');
  try {
    const { size } = await file.stat();
    // Recorded by name: results are kept in the checkout, the workload lives wherever DV_BENCH_WORK says.
    ledger.startNight(basename(image), previous ? await changedSince(previous, image, size) : null);
    const ends = await chunkEnds(file, size, o.chunker);
    const scratch = Buffer.alloc(o.chunker.max);
    let start = 0;
    for (const end of ends) {
      const chunk = scratch.subarray(0, end - start);
      await readFully(file, chunk, start);
      start = end;
      if (isZero(chunk, 0, chunk.length)) {
        ledger.zeroChunk();
        continue;
      }
      const id = createHash('sha256').update(chunk).digest('hex');
      ledger.chunk(id, chunk.length, () =>
        o.levels.map((level) => compress(chunk, { compressionLevel: level }).length),
      );
    }
    return ledger.endNight();
  } finally {
    await file.close();
  }
}

const mib = (bytes: number): string => (bytes / MiB).toFixed(1);

const o = parse();
const images = await ensureWorkload(work, o.nights, o.size);
const ledger = new DedupLedger(o.levels);
const nights: NightDedup[] = [];
console.log(
  `chunker min ${o.chunker.min} avg ${o.chunker.avg} max ${o.chunker.max}; zstd levels ${o.levels.join(', ')}; MiB`,
);
console.log(
  `| image | chunks (+ zero) | new chunks | changed 4 KiB blocks | new raw | ${o.levels.map((l) => `new stored, zstd ${l}`).join(' | ')} |`,
);
console.log(`|---|---|---|---|---|${o.levels.map(() => '---|').join('')}`);
for (const [i, image] of images.entries()) {
  const night = await countNight(image, images[i - 1], ledger, o);
  nights.push(night);
  const changed = night.changedBytes === null ? '' : mib(night.changedBytes);
  console.log(
    `| ${night.image} | ${night.chunks} (+ ${night.zeroChunks}) | ${night.newChunks} | ${changed} | ${mib(night.newRawBytes)} | ${night.newStoredBytes.map(mib).join(' | ')} |`,
  );
}
const totals = o.levels.map((_, i) => nights.reduce((sum, n) => sum + (n.newStoredBytes[i] ?? 0), 0));
console.log(
  `repository data after the last night: ${o.levels.map((l, i) => `zstd ${l} ${mib(totals[i] ?? 0)} MiB`).join(', ')}`,
);

const date = new Date().toISOString();
const out = join(root, 'bench', 'results', `dedup-${date.replace(/[:.]/g, '-')}.json`);
mkdirSync(dirname(out), { recursive: true });
writeFileSync(
  out,
  `${JSON.stringify({ date, chunker: o.chunker, levels: o.levels, nights, totals }, null, 2)}\n`,
);
console.log(`written to ${out}`);
