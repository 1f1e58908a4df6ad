import { type ChildProcess, spawn } from 'node:child_process';
import { DISKVAULT } from './diskvault-command.js';

/** A `diskvault` command still running: its output so far, and how it ended once it has. */
export interface RunningCli {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/**
 * Starts the real CLI with `env` over the test's own environment, for tests that act on it while it runs
 * (signals, input fed on its standard input, which is a pipe that may be written to or left alone).
 */
export function startCli(args: string[], env: Record<string, string>): RunningCli {
  const child = spawn(DISKVAULT, args, { env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    out += d;
  });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => {
    err += d;
  });
  // A command that exits without reading all of its input must not fail the test through EPIPE.
  child.stdin!.on('error', () => {});
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) =>
    child.on('close', (code, signal) => r({ code, signal })),
  );
  return { child, stdout: () => out, stderr: () => err, exit };
}
