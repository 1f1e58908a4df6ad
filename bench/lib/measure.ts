import { spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** What one measured command cost, as GNU time reports it for the process and its children. */
export interface Measurement {
  wallSeconds: number;
  /** User plus system CPU; the parts follow, so an outlier can be told apart (system time: the kernel). */
  cpuSeconds: number;
  userSeconds: number;
  systemSeconds: number;
  peakRssMiB: number;
  stdout: string;
}

export interface RunOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** A file to feed on standard input. */
  stdinFile?: string;
  /** A file to receive standard output (then `stdout` is empty). */
  stdoutFile?: string;
}

/**
 * Runs a command under /usr/bin/time so wall, CPU and peak RSS come from the kernel's accounting, not from
 * sampling. Throws with the command's stderr when it fails: a benchmark never reports a failed run as a time.
 */
export async function measure(cmd: string, args: string[], opts: RunOptions = {}): Promise<Measurement> {
  const dir = mkdtempSync(join(tmpdir(), 'dv-bench-time-'));
  const timeFile = join(dir, 'time');
  const stdin = opts.stdinFile ? openSync(opts.stdinFile, 'r') : 'ignore';
  const stdout = opts.stdoutFile ? openSync(opts.stdoutFile, 'w') : 'pipe';
  try {
    const child = spawn('/usr/bin/time', ['-f', '%e %U %S %M', '-o', timeFile, cmd, ...args], {
      cwd: opts.cwd,
      env: { ...process.env, ...opts.env },
      stdio: [stdin, stdout, 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
    });
    child.stderr?.on('data', (d: Buffer) => {
      err = (err + d.toString()).slice(-4000);
    });
    const code = await new Promise<number>((resolve, reject) => {
      child.on('error', reject);
      child.on('close', (c) => resolve(c ?? 1));
    });
    if (code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${code}: ${err.trim()}`);
    const [wall, user, sys, rssKiB] = readFileSync(timeFile, 'utf8')
      .trim()
      .split(/\s+/)
      .slice(-4)
      .map(Number);
    return {
      wallSeconds: wall,
      cpuSeconds: user + sys,
      userSeconds: user,
      systemSeconds: sys,
      peakRssMiB: rssKiB / 1024,
      stdout: out,
    };
  } finally {
    if (typeof stdin === 'number') closeSync(stdin);
    if (typeof stdout === 'number') closeSync(stdout);
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Apparent bytes under a folder: what the repository holds, independent of filesystem block rounding. */
export async function folderBytes(path: string): Promise<number> {
  const m = await measure('du', ['-sb', path]);
  return Number(m.stdout.split(/\s+/)[0]);
}

/** CPU seconds and peak RSS of a long-running process (the server), read from /proc between steps. */
export function processUsage(pid: number): { cpuSeconds: number; peakRssMiB: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]);
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const hwm = /VmHWM:\s+(\d+) kB/.exec(status);
  return { cpuSeconds: ticks / 100, peakRssMiB: hwm ? Number(hwm[1]) / 1024 : 0 };
}

/**
 * Reads a file once, untimed, so the step that follows reads it from the page cache. The workloads (2 GiB
 * and 8 GiB images, every tool's repository and restores) outgrow this machine's memory, so without this
 * whoever read an image first after it was evicted paid for reading it back and for the reclaim that made
 * room: 3–6 s of system time on diskvault's night1 and night2 in the 06:13 run, the first tool to run,
 * against ≈0.6 s for the tools after it.
 */
export async function intoPageCache(file: string): Promise<void> {
  await measure('cat', [file], { stdoutFile: '/dev/null' });
}

/** The middle value; the mean of the two middle ones for an even count. */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}
