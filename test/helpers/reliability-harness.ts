import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { ChunkerParams } from '../../repo-engine/manifest-codec.js';
import type { SnapshotInfo, VerifyReport } from '../../repo-engine/types.js';
import { DISKVAULT } from './diskvault-command.js';
import { type SpawnedServer, spawnServer, startTestServer, TEST_CHUNKER } from './server.js';

/**
 * What the reliability tests share: a repository created with small chunks, the server as a real child
 * process that can be SIGKILLed and restarted on the same data folder, the real CLI as a child process,
 * and ways to look at the repository from outside (snapshot list, storage files, verify).
 */

export async function tempDir(prefix: string): Promise<string> {
  return mkdtemp(path.join(os.tmpdir(), `dv-rel-${prefix}-`));
}

/**
 * Creates a repository in `dataDir` with the given chunker (the CLI server has no chunker flag: the
 * parameters are fixed at creation), so later spawned servers use small chunks and many of them.
 */
export async function createRepository(
  dataDir: string,
  chunker: ChunkerParams = TEST_CHUNKER,
): Promise<void> {
  const srv = await startTestServer({ dataDir, chunker });
  await srv.stop();
}

/** A spawned server that can be killed and started again on the same data folder. */
export class ServerProcess {
  current?: SpawnedServer;
  constructor(
    readonly dataDir: string,
    readonly args: string[] = ['--gc-grace', '0s'],
  ) {}

  async start(): Promise<SpawnedServer> {
    this.current = await spawnServer({ dataDir: this.dataDir, args: this.args });
    return this.current;
  }
  get url(): string {
    if (!this.current) throw new Error('server not started');
    return this.current.url;
  }
  get adminToken(): string {
    if (!this.current) throw new Error('server not started');
    return this.current.adminToken;
  }
  get pid(): number {
    return this.current?.process.pid ?? -1;
  }
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<number | string> {
    const s = this.current;
    if (!s) return -1;
    return s.kill(signal);
  }
  /** SIGKILL now, without waiting (safe to call from a child's output callback). */
  killNow(): void {
    const p = this.current?.process;
    if (p && p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  }
  async restart(): Promise<SpawnedServer> {
    await this.kill('SIGKILL');
    return this.start();
  }
  async stop(): Promise<void> {
    await this.kill('SIGTERM');
  }
}

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** True when the `killWhen` trigger fired and the child was SIGKILLed. */
  killed: boolean;
  /** True when the command outlived `timeoutMs` and was killed. */
  timedOut: boolean;
}

export interface CliOptions {
  server: string;
  token: string;
  /** Looked at after every output write (restore's --json progress goes to stdout); true SIGKILLs the agent. */
  killWhen?: (stderr: string, stdout: string) => boolean;
  /** Called on every stderr write (to act on another process: kill the server mid-upload). */
  onStderr?: (stderr: string) => void;
  timeoutMs?: number;
  /**
   * Written to the command's stdin, which then stays open: a command reading it waits for the rest until it
   * is killed. A kill timed on progress then always lands before the command could finish.
   */
  stdinHeld?: Buffer;
}

/** Runs `diskvault ...args` (the launcher) with DISKVAULT_SERVER/DISKVAULT_TOKEN set; never hangs past timeoutMs. */
export function dv(args: string[], opts: CliOptions): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(DISKVAULT, args, {
      env: {
        ...process.env,
        DISKVAULT_SERVER: opts.server,
        DISKVAULT_TOKEN: opts.token,
        DISKVAULT_CONFIG: '/nonexistent/agent.json',
      },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    // EPIPE once the command is killed with the pipe still open is expected.
    child.stdin.on('error', () => {});
    if (opts.stdinHeld) child.stdin.write(opts.stdinHeld);
    else child.stdin.end();
    let stdout = '';
    let stderr = '';
    let killed = false;
    let timedOut = false;
    // A hung command is a finding, not a reason to stop the test: it is killed and reported as timed out,
    // so the test can still check what the hang left behind.
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, opts.timeoutMs ?? 90_000);
    const check = () => {
      if (!killed && opts.killWhen?.(stderr, stdout)) {
        killed = true;
        child.kill('SIGKILL');
      }
    };
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
      check();
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
      opts.onStderr?.(stderr);
      check();
    });
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      child.stdin.destroy();
      if (timedOut) {
        stderr += `\n[test harness: diskvault ${args[0]} did not finish within ${opts.timeoutMs ?? 90_000} ms and was killed]\n`;
      }
      resolve({ code, signal, stdout, stderr, killed, timedOut });
    });
  });
}

/** The `--json` summary line a backup or restore prints. */
export function summaryOf(
  r: CliResult,
): Record<string, unknown> & { snapshot: string; bytesUploaded?: number; size: number } {
  const text = `${r.stdout}\n${r.stderr}`;
  const line = text.split('\n').find((l) => l.startsWith('{"type":"summary"'));
  if (!line) throw new Error(`no --json summary (exit ${r.code}):\n${r.stdout}\n${r.stderr}`);
  return JSON.parse(line);
}

/** The last `--json` progress line of a backup or restore, or undefined before the first. */
export function lastProgress(stderr: string): Record<string, number> | undefined {
  const lines = stderr.split('\n').filter((l) => l.startsWith('{') && l.includes('"progress"'));
  if (lines.length === 0) return undefined;
  try {
    return JSON.parse(lines[lines.length - 1]);
  } catch {
    return undefined; // a line still being written
  }
}

export interface Conn {
  server: string;
  token: string;
}

export async function backupCli(
  conn: Conn,
  image: string,
  host: string,
  disk: string,
  extra: string[] = [],
  opts: Partial<CliOptions> = {},
) {
  return dv(['backup', image, '--host', host, '--disk', disk, '--json', ...extra], { ...conn, ...opts });
}

export async function listSnapshotsCli(conn: Conn): Promise<SnapshotInfo[]> {
  const r = await dv(['snapshots', '--json'], conn);
  if (r.code !== 0) throw new Error(`snapshots failed (${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout);
}

export async function verifyCli(
  conn: Conn,
  readData = true,
): Promise<{ code: number | null; report: VerifyReport; stderr: string }> {
  const r = await dv(['verify', ...(readData ? ['--read-data'] : []), '--json'], conn);
  let report: VerifyReport;
  try {
    report = JSON.parse(r.stdout);
  } catch {
    throw new Error(`verify printed no JSON report (exit ${r.code}):\n${r.stdout}\n${r.stderr}`);
  }
  return { code: r.code, report, stderr: r.stderr };
}

/** Restores `snapshot` to `target` and returns the restored file's SHA-256 (throws on a failed restore). */
export async function restoreCli(
  conn: Conn,
  snapshot: string,
  target: string,
  extra: string[] = [],
): Promise<string> {
  const r = await dv(['restore', snapshot, target, '--json', ...extra], conn);
  if (r.code !== 0) throw new Error(`restore ${snapshot} failed (${r.code}): ${r.stderr.slice(-2000)}`);
  return sha256File(target);
}

export async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const b of createReadStream(file, { highWaterMark: 4 << 20 })) h.update(b as Buffer);
  return h.digest('hex');
}

/** Every file under the local storage root, path -> size, temp files included (they must not pile up). */
export async function storageListing(dataDir: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  const root = path.join(dataDir, 'storage');
  const walk = async (dir: string): Promise<void> => {
    let entries: import('node:fs').Dirent[];
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    for (const e of entries) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) {
        await walk(p);
        continue;
      }
      // A server still at work renames or removes its temp files between readdir and stat: such a file is gone, not listed.
      const size = await stat(p).then(
        (s) => s.size,
        (err: NodeJS.ErrnoException) => {
          if (err.code === 'ENOENT') return undefined;
          throw err;
        },
      );
      if (size !== undefined) out.set(path.relative(root, p), size);
    }
  };
  await walk(root);
  return out;
}

export async function removeDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
}

/** Peak resident set of a process (VmHWM), in bytes, or undefined when /proc is not there. */
export async function peakRss(pid: number): Promise<number | undefined> {
  try {
    const { readFile } = await import('node:fs/promises');
    const m = /VmHWM:\s+(\d+) kB/.exec(await readFile(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Raw bytes of the chunks of `chunks` the repository lacks, asked of the server through a throwaway session:
 * what a first backup of that image must upload, the yardstick for "a rerun uploads only what is missing".
 */
export async function missingBytes(conn: Conn, host: string, chunks: Map<string, number>): Promise<number> {
  const auth = { authorization: `Bearer ${conn.token}`, 'content-type': 'application/json' };
  const open = await fetch(`${conn.server}/v1/sessions`, {
    method: 'POST',
    headers: auth,
    body: JSON.stringify({ host, disk: 'probe' }),
  });
  if (open.status !== 201)
    throw new Error(`cannot open a probe session: ${open.status} ${await open.text()}`);
  const { id } = (await open.json()) as { id: string };
  try {
    const res = await fetch(`${conn.server}/v1/sessions/${id}/missing`, {
      method: 'POST',
      headers: auth,
      body: JSON.stringify({ ids: [...chunks.keys()] }),
    });
    const { missing } = (await res.json()) as { missing: string[] };
    return missing.reduce((n, c) => n + (chunks.get(c) ?? 0), 0);
  } finally {
    await fetch(`${conn.server}/v1/sessions/${id}`, { method: 'DELETE', headers: auth });
  }
}

/** A CLI failure must be a message for people, never a stack trace. */
export function hasStackTrace(text: string): boolean {
  return /\n\s+at .+\(.*:\d+:\d+\)/.test(text) || /node:internal/.test(text);
}
