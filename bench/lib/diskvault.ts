import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { folderBytes, measure, processUsage } from './measure.js';
import type { Peer, PeerStep } from './peers.js';

const here = dirname(fileURLToPath(import.meta.url));
/**
 * The `diskvault` command as installed (agent/diskvault, which starts node on dist/agent/cli.js with the
 * malloc settings it ships with): the benchmark measures what a user runs.
 */
export const DISKVAULT = resolve(here, '../../../agent/diskvault');

export interface S3Target {
  endpoint: string;
  bucket: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
}

async function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => ok(port));
    });
    s.on('error', fail);
  });
}

/** Waits for the line a `diskvault server` prints once it accepts connections; resolves with its URL. */
export function waitForListening(child: ChildProcess): Promise<string> {
  return new Promise((ok, fail) => {
    let out = '';
    let err = '';
    const timer = setTimeout(() => fail(new Error(`server did not start: ${err}`)), 30_000);
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /listening on (https?:\/\/\S+)/i.exec(out);
      if (m) {
        clearTimeout(timer);
        ok(m[1] as string);
      }
    });
    child.stderr?.on('data', (d: Buffer) => {
      err = (err + d.toString()).slice(-4000);
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      fail(new Error(`server exited ${code}: ${err}`));
    });
  });
}

export interface DiskvaultPeer extends Peer {
  /**
   * Server CPU seconds since it began to listen, and its peak RSS so far. Its start (about 0.8 s of CPU:
   * loading modules, opening the repository and index) is left out: a server starts once and serves every
   * backup after, so no backup pays for it. Each restic and borg step is a process of its own and pays its
   * start, as the agent does.
   */
  serverUsage(): { cpuSeconds: number; peakRssMiB: number };
  inPlaceRestore(snapshot: string, target: string): Promise<PeerStep>;
  lastSummary: Record<string, unknown> | undefined;
  stop(): Promise<void>;
}

/**
 * The real server and the real agent over 127.0.0.1, each its own process, as a sysadmin would run them.
 * `chunkAvg` creates the repository with another average chunk size (the chunker comparison).
 */
export function diskvault(
  dir: string,
  /** `encryption` 'none' makes a plaintext (format 1) repository; the default is the server's (encrypted). */
  opts: {
    name?: string;
    s3?: S3Target;
    chunkAvg?: number;
    encryption?: 'aes-256-gcm' | 'none';
    /** Back up and restore end to end, with a key file made in `dir` at init. */
    e2e?: boolean;
  } = {},
): DiskvaultPeer {
  const data = join(dir, 'data');
  const keyFile = join(dir, 'e2e.key');
  const passwordFile = join(dir, 'e2e.pw');
  /** The agent's flags of an end-to-end run (none otherwise). */
  const keyArgs = () => (opts.e2e ? ['--key', keyFile, '--password-file', passwordFile] : []);
  let server: ChildProcess | undefined;
  /** The server's CPU seconds once it listened. */
  let startCpu = 0;
  let url = '';
  let token = '';
  const self: DiskvaultPeer = {
    name: opts.name ?? (opts.s3 ? 'diskvault s3' : 'diskvault'),
    lastSummary: undefined,
    async init() {
      rmSync(dir, { recursive: true, force: true });
      mkdirSync(data, { recursive: true });
      const port = await freePort();
      url = `http://127.0.0.1:${port}`;
      const args = ['server', '--data', data, '--listen', `127.0.0.1:${port}`];
      const env: NodeJS.ProcessEnv = { ...process.env };
      if (opts.s3) {
        args.push(
          '--s3-endpoint',
          opts.s3.endpoint,
          '--s3-region',
          opts.s3.region,
          '--s3-bucket',
          opts.s3.bucket,
        );
        args.push('--s3-prefix', `bench-${Date.now()}`, '--s3-path-style');
        env.AWS_ACCESS_KEY_ID = opts.s3.accessKeyId;
        env.AWS_SECRET_ACCESS_KEY = opts.s3.secretAccessKey;
      }
      if (opts.chunkAvg) {
        args.push('--chunk-avg', String(opts.chunkAvg));
      }
      if (opts.encryption) args.push('--encryption', opts.encryption);
      server = spawn(DISKVAULT, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
      await waitForListening(server);
      startCpu = server.pid ? processUsage(server.pid).cpuSeconds : 0;
      if (opts.e2e) {
        writeFileSync(passwordFile, 'diskvault bench passphrase\n', { mode: 0o600 });
        const made = spawnSync(
          DISKVAULT,
          ['key', 'create', '--out', keyFile, '--password-file', passwordFile],
          {
            encoding: 'utf8',
          },
        );
        if (made.status !== 0) throw new Error(`key create failed: ${made.stderr}`);
      }
      token = readFileSync(join(data, 'admin.token'), 'utf8').trim();
    },
    async backup(image, night) {
      const m = await measure(DISKVAULT, [
        'backup',
        image,
        '--server',
        url,
        '--token',
        token,
        '--host',
        'bench',
        '--disk',
        'sda',
        '--json',
        ...keyArgs(),
      ]);
      self.lastSummary = lastJson(m.stdout);
      return { step: `backup night${night}`, m, repoBytes: await self.repoBytes() };
    },
    async restore(outFile, night) {
      const m = await measure(DISKVAULT, [
        'restore',
        'latest',
        outFile,
        '--host',
        'bench',
        '--disk',
        'sda',
        '--server',
        url,
        '--token',
        token,
        '--json',
        ...keyArgs(),
      ]);
      self.lastSummary = lastJson(m.stdout);
      return { step: `restore night${night}`, m };
    },
    async inPlaceRestore(snapshot, target) {
      const m = await measure(DISKVAULT, [
        'restore',
        snapshot,
        target,
        '--in-place',
        '--server',
        url,
        '--token',
        token,
        '--json',
        ...keyArgs(),
      ]);
      self.lastSummary = lastJson(m.stdout);
      return { step: 'in-place restore night3 over night2', m };
    },
    repoBytes: () => (opts.s3 ? Promise.resolve(NaN) : folderBytes(join(data, 'storage'))),
    serverUsage: () => {
      if (!server?.pid) return { cpuSeconds: 0, peakRssMiB: 0 };
      const usage = processUsage(server.pid);
      return { cpuSeconds: usage.cpuSeconds - startCpu, peakRssMiB: usage.peakRssMiB };
    },
    async stop() {
      if (!server || server.exitCode !== null) return;
      const exited = new Promise((ok) => server?.on('exit', ok));
      server.kill('SIGTERM');
      await exited;
    },
  };
  return self;
}

function lastJson(stdout: string): Record<string, unknown> | undefined {
  const lines = stdout.trim().split('\n').reverse();
  for (const line of lines) {
    try {
      const o = JSON.parse(line) as Record<string, unknown>;
      if (o.type === 'summary') return o;
    } catch {
      // progress lines and human text are skipped
    }
  }
  return undefined;
}
