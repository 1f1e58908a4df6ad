import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { type RunningService, readAdminTokenFile, startService } from '../../api/service.js';
import { createToken, type Role } from '../../api/token-store.js';
import type { ChunkerParams } from '../../repo-engine/manifest-codec.js';
import type { RepositoryApi } from '../../repo-engine/types.js';
import type { StorageAdapter } from '../../storage-adapters/adapter.js';
import { openStorage } from '../../storage-adapters/index.js';
import { DISKVAULT } from './diskvault-command.js';
import { startFakeS3 } from './fake-s3.js';
import { type FaultInjectingStorage, withFaults } from './fault-injecting-storage.js';

/**
 * A real diskvault server for tests, on 127.0.0.1 and a free port, over a fresh temp data folder.
 * `startTestServer` runs it in this process (fast; the repository is reachable for assertions);
 * `spawnServer` runs `diskvault server` (agent/diskvault) as a child (for end-to-end, signal and kill tests).
 */
export interface TestServerOptions {
  storage?: 'local' | 's3';
  /** Small chunks keep tests fast; only applied when the repository is created. */
  chunker?: ChunkerParams;
  gcGraceMs?: number;
  sessionLeaseMs?: number;
  sessionMaxAgeMs?: number;
  maxSessionsPerToken?: number;
  cacheBytes?: number;
  now?: () => number;
  /** Wrap storage in the fault injector (test/helpers/fault-injecting-storage.ts), exposed as `faults`. */
  faults?: boolean;
  /** Reuse a data folder (restart tests); otherwise a temp folder removed by stop(). */
  dataDir?: string;
  maxManifestBytes?: number;
  idleTimeoutMs?: number;
  /** Encryption of a repository this start creates (the server's default: aes-256-gcm). */
  encryption?: 'aes-256-gcm' | 'none';
  /** False: the server offers no fetch stream (restores fetch one chunk per request). */
  chunkFetchStream?: boolean;
  /** False: neither the upload nor the fetch stream, as `diskvault server --no-streams`. */
  streams?: boolean;
}

export interface TestServer {
  url: string;
  adminToken: string;
  dataDir: string;
  repo: RepositoryApi;
  /** The storage the repository writes to (the fault wrapper when `faults` is set). */
  storage: StorageAdapter;
  faults?: FaultInjectingStorage;
  /** Every log line the server wrote (JSON request log and errors). */
  logs: string[];
  makeToken(role: Role, hosts?: string[], tenant?: string): Promise<string>;
  stop(): Promise<void>;
}

export const TEST_CHUNKER: ChunkerParams = { min: 16 * 1024, avg: 64 * 1024, max: 256 * 1024 };

export async function startTestServer(opts: TestServerOptions = {}): Promise<TestServer> {
  const ownDir = !opts.dataDir;
  const dataDir = opts.dataDir ?? (await mkdtemp(path.join(os.tmpdir(), 'dv-api-')));
  const s3 = opts.storage === 's3' ? await startFakeS3() : undefined;
  const logs: string[] = [];
  let faults: FaultInjectingStorage | undefined;
  let service: RunningService;
  try {
    let storage = s3
      ? await openStorage({
          kind: 's3',
          endpoint: s3.endpoint,
          region: s3.region,
          bucket: s3.bucket,
          forcePathStyle: true,
          credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
        })
      : undefined;
    if (opts.faults) {
      // Local storage where the service would put it (<data>/storage), so tests find its files.
      storage ??= await openStorage({ kind: 'local', root: path.join(dataDir, 'storage') });
      faults = withFaults(storage);
      storage = faults;
    }
    service = await startService({
      host: '127.0.0.1',
      port: 0,
      dataDir,
      chunker: opts.chunker ?? TEST_CHUNKER,
      ...(storage ? { storage } : {}),
      ...(opts.gcGraceMs !== undefined ? { gcGraceMs: opts.gcGraceMs } : {}),
      ...(opts.sessionLeaseMs !== undefined ? { sessionLeaseMs: opts.sessionLeaseMs } : {}),
      ...(opts.sessionMaxAgeMs !== undefined ? { sessionMaxAgeMs: opts.sessionMaxAgeMs } : {}),
      ...(opts.maxSessionsPerToken !== undefined ? { maxSessionsPerToken: opts.maxSessionsPerToken } : {}),
      ...(opts.cacheBytes !== undefined ? { cacheBytes: opts.cacheBytes } : {}),
      ...(opts.now ? { now: opts.now } : {}),
      ...(opts.encryption ? { encryption: opts.encryption } : {}),
      ...(opts.streams !== undefined ? { streams: opts.streams } : {}),
      log: (line) => logs.push(line),
      server: {
        ...(opts.maxManifestBytes !== undefined ? { maxManifestBytes: opts.maxManifestBytes } : {}),
        ...(opts.idleTimeoutMs !== undefined ? { idleTimeoutMs: opts.idleTimeoutMs } : {}),
        ...(opts.chunkFetchStream !== undefined ? { chunkFetchStream: opts.chunkFetchStream } : {}),
      },
    });
  } catch (err) {
    await s3?.stop();
    if (ownDir) await rm(dataDir, { recursive: true, force: true });
    throw err;
  }
  const adminToken = service.createdAdminToken ?? (await readAdminTokenFile(dataDir));
  return {
    url: service.url,
    adminToken,
    dataDir,
    repo: service.repo,
    storage: service.storage,
    ...(faults ? { faults } : {}),
    logs,
    makeToken: async (role, hosts = [], tenant) =>
      (await createToken(dataDir, { role, hosts, ...(tenant !== undefined ? { tenant } : {}) })).token,
    stop: async () => {
      await service.stop(1000);
      await s3?.stop();
      if (ownDir) await rm(dataDir, { recursive: true, force: true });
    },
  };
}

export interface SpawnedServer {
  url: string;
  adminToken: string;
  dataDir: string;
  process: ChildProcess;
  /** Everything the child wrote to stdout and stderr so far. */
  output(): { stdout: string; stderr: string };
  /** Resolves with the exit code (or the signal name) once the child has exited. */
  exited: Promise<number | string>;
  kill(signal?: NodeJS.Signals): Promise<number | string>;
}

/** Starts `diskvault server --listen 127.0.0.1:0 --data DIR ...args` and waits for its "listening on" line. */
export async function spawnServer(opts: {
  dataDir: string;
  args?: string[];
  env?: NodeJS.ProcessEnv;
  timeoutMs?: number;
}): Promise<SpawnedServer> {
  const child = spawn(
    DISKVAULT,
    ['server', '--listen', '127.0.0.1:0', '--data', opts.dataDir, ...(opts.args ?? [])],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...opts.env },
    },
  );
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const exited = new Promise<number | string>((resolve) =>
    child.once('exit', (code, signal) => resolve(code ?? signal ?? -1)),
  );
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`server did not start within ${opts.timeoutMs ?? 20_000} ms:\n${stdout}\n${stderr}`));
    }, opts.timeoutMs ?? 20_000);
    const check = () => {
      const m = /listening on (https?:\/\/\S+)/.exec(stdout);
      if (m) {
        clearTimeout(timer);
        child.stdout.off('data', check);
        resolve(m[1]);
      }
    };
    child.stdout.on('data', check);
    exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code} before listening:\n${stdout}\n${stderr}`));
    });
  });
  return {
    url,
    adminToken: await readAdminTokenFile(opts.dataDir),
    dataDir: opts.dataDir,
    process: child,
    output: () => ({ stdout, stderr }),
    exited,
    kill: (signal = 'SIGTERM') => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}
