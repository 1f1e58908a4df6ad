import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { DiskvaultClient } from '../agent/client.js';
import { startService } from '../api/service.js';
import type { RepositoryApi } from '../repo-engine/types.js';
import { median } from './lib/measure.js';

/**
 * What the HTTP layer costs: chunk upload MB/s over loopback (1 MiB chunks, 8 in flight) against calling
 * the engine directly, and the latency of a 10,000-id missing query both ways; then the same chunks
 * downloaded as a restore fetches them, with the CPU the server process spent serving them.
 * Run: node dist/bench/api.js [chunks=256] [rounds=3]
 */
const CHUNKS = Number(process.argv[2] ?? 256);
const ROUNDS = Number(process.argv[3] ?? 3);
const CONCURRENCY = 8;
const CHUNK_BYTES = 1024 * 1024;
const MISSING_IDS = 10_000;

async function pool<T>(items: T[], n: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: n }, async () => {
      while (next < items.length) await fn(items[next++]);
    }),
  );
}

function makeChunks(count: number): { id: string; data: Buffer }[] {
  return Array.from({ length: count }, () => {
    const data = randomBytes(CHUNK_BYTES);
    return { id: createHash('sha256').update(data).digest('hex'), data };
  });
}

async function withService<T>(
  fn: (s: Awaited<ReturnType<typeof startService>>, dir: string) => Promise<T>,
): Promise<T> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'dv-bench-api-'));
  const service = await startService({ host: '127.0.0.1', port: 0, dataDir: dir, log: () => {} });
  try {
    return await fn(service, dir);
  } finally {
    await service.stop(1000);
    await rm(dir, { recursive: true, force: true });
  }
}

/** The `diskvault` command as installed (see bench/lib/diskvault.ts). */
const DISKVAULT = fileURLToPath(new URL('../../agent/diskvault', import.meta.url));

/** `diskvault server` as a child process on a free port; its URL is read from its "listening on" line. */
async function withServerProcess<T>(
  fn: (s: { url: string; token: string; cpuSeconds: () => number }) => Promise<T>,
): Promise<T> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'dv-bench-api-'));
  const child = spawn(DISKVAULT, ['server', '--data', dir, '--listen', '127.0.0.1:0'], {
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  try {
    const url = await new Promise<string>((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        const m = /listening on (http:\/\/\S+)/.exec(out);
        if (m) resolve(m[1]);
      });
      child.once('exit', (code) => reject(new Error(`server exited ${code}`)));
    });
    const token = (await readFile(path.join(dir, 'admin.token'), 'utf8')).trim();
    return await fn({ url, token, cpuSeconds: () => processCpuSeconds(child.pid) });
  } finally {
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await exited;
    await rm(dir, { recursive: true, force: true });
  }
}

/** User + system CPU of a process so far, from /proc (Linux); NaN elsewhere. */
function processCpuSeconds(pid: number | undefined): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name, which is in parentheses and may hold spaces: utime and stime are 14, 15.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return Number.NaN;
  }
}

async function main(): Promise<void> {
  const mb = (CHUNKS * CHUNK_BYTES) / 1e6;
  const ids = Array.from({ length: MISSING_IDS }, () => randomBytes(32).toString('hex'));
  const binaryIds = Buffer.concat(ids.map((id) => Buffer.from(id, 'hex')));
  type Figures = {
    mbps: number;
    missingMs: number;
    binaryMs: number;
    downloadMbps: number;
    /** CPU seconds the server process spent on the download (HTTP only). */
    downloadServerCpu: number;
  };

  /** Median of 7 timings of `query`, after one untimed call that warms statements and sockets. */
  const latency = async (query: () => Promise<unknown>): Promise<number> => {
    await query();
    const lat: number[] = [];
    for (let i = 0; i < 7; i++) {
      const t = performance.now();
      await query();
      lat.push(performance.now() - t);
    }
    return median(lat);
  };

  const measureDirect = (chunks: { id: string; data: Buffer }[]): Promise<Figures> =>
    withService(async (s) => {
      const repo: RepositoryApi = s.repo;
      const session = await repo.beginSession('bench', 'sda');
      const t0 = performance.now();
      await pool(chunks, CONCURRENCY, async (c) => {
        await repo.putChunk(session.id, c.id, c.data, 'raw');
      });
      const upload = (performance.now() - t0) / 1000;
      const t1 = performance.now();
      await pool(chunks, CONCURRENCY, async (c) => {
        const lease = await repo.leaseStoredChunkUnverified(c.id);
        lease.release(true);
      });
      const download = (performance.now() - t1) / 1000;
      return {
        mbps: mb / upload,
        missingMs: await latency(() => repo.filterMissing(session.id, ids)),
        binaryMs: await latency(() => repo.filterMissingBinary(session.id, binaryIds)),
        downloadMbps: mb / download,
        downloadServerCpu: Number.NaN,
      };
    });

  // The server in its own process, as deployed, and the agent's own HTTP client (keep-alive sockets, as a
  // backup uses them): the figure is what an agent gets, not what a generic HTTP client gets.
  const measureHttp = (chunks: { id: string; data: Buffer }[]): Promise<Figures> =>
    withServerProcess(async (s) => {
      const client = new DiskvaultClient({ server: s.url, token: s.token, concurrency: CONCURRENCY });
      try {
        const session = (await client.createSession('bench', 'sda')).id;
        const t0 = performance.now();
        await pool(chunks, CONCURRENCY, async (c) => {
          const r = await client.putChunk(session, c.id, c.data, 'raw');
          if (!r.stored) throw new Error(`chunk ${c.id} was not stored`);
        });
        const upload = (performance.now() - t0) / 1000;
        const cpu0 = s.cpuSeconds();
        const t1 = performance.now();
        await pool(chunks, CONCURRENCY, async (c) => {
          const got = await client.getChunkPayload(c.id);
          if (got.rawLength !== c.data.length) throw new Error(`chunk ${c.id} came back wrong`);
        });
        const download = (performance.now() - t1) / 1000;
        const downloadServerCpu = s.cpuSeconds() - cpu0;
        return {
          mbps: mb / upload,
          missingMs: await latency(() => client.missing(session, ids)),
          binaryMs: await latency(() => client.missingBinary(session, binaryIds)),
          downloadMbps: mb / download,
          downloadServerCpu,
        };
      } finally {
        client.close();
      }
    });

  // fsync latency makes single runs swing by ±15%: rounds alternate the two ways, each with fresh chunks
  // (a repeated chunk would be deduplicated), and the medians are compared.
  const rounds: { direct: Figures; http: Figures }[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    const direct = await measureDirect(makeChunks(CHUNKS));
    const http = await measureHttp(makeChunks(CHUNKS));
    rounds.push({ direct, http });
  }
  const medians = (way: 'direct' | 'http'): Figures => ({
    mbps: median(rounds.map((r) => r[way].mbps)),
    missingMs: median(rounds.map((r) => r[way].missingMs)),
    binaryMs: median(rounds.map((r) => r[way].binaryMs)),
    downloadMbps: median(rounds.map((r) => r[way].downloadMbps)),
    downloadServerCpu: median(rounds.map((r) => r[way].downloadServerCpu)),
  });
  const direct = medians('direct');
  const http = medians('http');
  process.stdout.write(
    `chunk upload, ${CHUNKS} x 1 MiB random (incompressible), ${CONCURRENCY} in flight, local storage, median of ${ROUNDS} rounds:\n`,
  );
  process.stdout.write(`  engine direct  ${direct.mbps.toFixed(1)} MB/s\n`);
  process.stdout.write(
    `  HTTP loopback  ${http.mbps.toFixed(1)} MB/s   (HTTP / direct = ${(http.mbps / direct.mbps).toFixed(2)})\n`,
  );
  process.stdout.write(`chunk download (as a restore fetches: Accept-Encoding zstd), the same chunks:\n`);
  process.stdout.write(`  engine direct  ${direct.downloadMbps.toFixed(1)} MB/s\n`);
  process.stdout.write(
    `  HTTP loopback  ${http.downloadMbps.toFixed(1)} MB/s   (HTTP / direct = ${(http.downloadMbps / direct.downloadMbps).toFixed(2)}; server process CPU ${http.downloadServerCpu.toFixed(2)} s)\n`,
  );
  process.stdout.write(`missing query, ${MISSING_IDS} ids, median of 7 per round:\n`);
  process.stdout.write(`  engine direct, hex ids        ${direct.missingMs.toFixed(1)} ms\n`);
  process.stdout.write(`  engine direct, binary ids     ${direct.binaryMs.toFixed(1)} ms\n`);
  process.stdout.write(
    `  HTTP JSON                     ${http.missingMs.toFixed(1)} ms   (x${(http.missingMs / direct.missingMs).toFixed(2)} of direct hex)\n`,
  );
  process.stdout.write(
    `  HTTP binary (the agent's)     ${http.binaryMs.toFixed(1)} ms   (x${(http.binaryMs / direct.binaryMs).toFixed(2)} of direct binary, x${(http.binaryMs / direct.missingMs).toFixed(2)} of direct hex)\n`,
  );
}

main().catch((err) => {
  process.stderr.write(`bench failed: ${(err as Error)?.stack ?? err}\n`);
  process.exitCode = 1;
});
