/**
 * The long version of the reliability tests, outside CI: `node dist/bench/soak.js [--seconds N] [--agents N]
 * [--crashes N] [--size-mib N]`.
 *
 * 1. Load: N agents speak the real protocol to one server process for --seconds; the server's RSS is
 *    sampled every second. Reports backups/s, MiB/s, errors, peak RSS (VmHWM), and verifies the repository.
 * 2. Crash loop: --crashes times, a real CLI backup of a changing image is running when the server is
 *    SIGKILLed at a random moment; the server restarts on the same folder, verify --read-data must pass,
 *    the backup is run again and must complete, and every snapshot so far must restore bit-exact.
 *
 * Prints one JSON object at the end; exits 1 if any check failed.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { createToken } from '../api/token-store.js';
import {
  backupCli,
  createRepository,
  peakRss,
  removeDir,
  restoreCli,
  ServerProcess,
  sleep,
  summaryOf,
  tempDir,
  verifyCli,
} from '../test/helpers/reliability-harness.js';
import { writeImage } from '../test/helpers/reliability-images.js';
import { runLoad } from '../test/helpers/reliability-load.js';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '300' },
    agents: { type: 'string', default: '32' },
    crashes: { type: 'string', default: '10' },
    'size-mib': { type: 'string', default: '128' },
    keep: { type: 'boolean', default: false },
  },
});
const seconds = Number(values.seconds);
const agents = Number(values.agents);
const crashes = Number(values.crashes);
const sizeMiB = Number(values['size-mib']);

const failures: string[] = [];
const result: Record<string, unknown> = { seconds, agents, crashes, sizeMiB };

async function currentRss(pid: number): Promise<number> {
  const m = /VmRSS:\s+(\d+) kB/.exec(await readFile(`/proc/${pid}/status`, 'utf8').catch(() => ''));
  return m ? Number(m[1]) * 1024 : 0;
}

async function loadPhase(dir: string): Promise<void> {
  const dataDir = path.join(dir, 'load-data');
  await createRepository(dataDir);
  const tokens: string[] = [];
  for (let i = 0; i < agents; i++)
    tokens.push((await createToken(dataDir, { role: 'agent', hosts: [`load${i}`] })).token);
  const server = new ServerProcess(dataDir);
  await server.start();
  const samples: number[] = [];
  const sampler = setInterval(() => {
    void currentRss(server.pid).then((r) => samples.push(r));
  }, 1000);
  try {
    const report = await runLoad({ url: server.url, tokens, seconds });
    clearInterval(sampler);
    const hwm = await peakRss(server.pid);
    const v = await verifyCli({ server: server.url, token: server.adminToken }, false);
    result.load = {
      backups: report.backups,
      backupsPerSecond: +(report.backups / report.seconds).toFixed(2),
      mibUploaded: +(report.bytesUploaded / 2 ** 20).toFixed(1),
      mibPerSecond: +(report.bytesUploaded / 2 ** 20 / report.seconds).toFixed(2),
      errors: report.errors.length,
      firstErrors: report.errors.slice(0, 5),
      serverPeakRssMiB: hwm === undefined ? null : Math.round(hwm / 2 ** 20),
      serverRssFirstLastMiB: [
        Math.round((samples[0] ?? 0) / 2 ** 20),
        Math.round((samples[samples.length - 1] ?? 0) / 2 ** 20),
      ],
      verifyOk: v.report.ok,
    };
    if (report.errors.length > 0) failures.push(`load: ${report.errors.length} errors`);
    if (!v.report.ok) failures.push('load: verify failed');
  } finally {
    clearInterval(sampler);
    await server.kill('SIGKILL');
  }
}

async function crashPhase(dir: string): Promise<void> {
  const dataDir = path.join(dir, 'crash-data');
  await createRepository(dataDir);
  const server = new ServerProcess(dataDir);
  await server.start();
  const conn = () => ({ server: server.url, token: server.adminToken });
  const kept = new Map<string, string>();
  const rounds: Record<string, unknown>[] = [];
  try {
    for (let n = 0; n < crashes; n++) {
      const image = path.join(dir, 'image.img');
      const sha = await writeImage(image, { seed: 'soak', sizeMiB, night: n, changePercent: 20 });
      const killAfterMs = 300 + Math.floor(Math.random() * 4000);
      const timer = setTimeout(() => server.killNow(), killAfterMs);
      const first = await backupCli(conn(), image, 'soak', 'sda', [], { timeoutMs: 600_000 });
      clearTimeout(timer);
      if (first.code === 0) kept.set(summaryOf(first).snapshot, sha);
      await server.restart();
      const v = await verifyCli(conn());
      const again = await backupCli(conn(), image, 'soak', 'sda', [], { timeoutMs: 600_000 });
      if (again.code === 0) kept.set(summaryOf(again).snapshot, sha);
      else failures.push(`crash ${n}: backup run again failed: ${again.stderr.slice(-300)}`);
      if (!v.report.ok)
        failures.push(`crash ${n}: verify failed: ${JSON.stringify(v.report.problems.slice(0, 3))}`);
      rounds.push({
        killAfterMs,
        firstExit: first.code,
        verifyOk: v.report.ok,
        rerunUploaded: again.code === 0 ? summaryOf(again).bytesUploaded : null,
      });
    }
    let restored = 0;
    for (const [id, sha] of kept) {
      const got = await restoreCli(conn(), id, path.join(dir, 'restored.img')).catch(
        (err: Error) => err.message,
      );
      if (got !== sha) failures.push(`snapshot ${id} does not restore bit-exact: ${got}`);
      else restored++;
    }
    result.crashes = { rounds, snapshots: kept.size, restoredBitExact: restored };
  } finally {
    await server.kill('SIGKILL');
  }
}

const dir = await tempDir('soak');
try {
  await loadPhase(dir);
  await sleep(500);
  if (crashes > 0) await crashPhase(dir);
} catch (err) {
  failures.push(`soak aborted: ${(err as Error).message}`);
} finally {
  if (!values.keep) await removeDir(dir);
}
result.failures = failures;
process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
process.exitCode = failures.length > 0 ? 1 : 0;
