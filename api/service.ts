import { chmod, mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ChunkerParams } from '../repo-engine/manifest-codec.js';
import { Repository } from '../repo-engine/repository.js';
import type { RepositoryApi } from '../repo-engine/types.js';
import type { StorageAdapter } from '../storage-adapters/adapter.js';
import { openStorage } from '../storage-adapters/index.js';
import { writeFileAtomic } from './atomic-file.js';
import type { ServerConfig } from './config.js';
import { restrictFolder } from './data-permissions.js';
import { isLoopbackHost } from './protocol.js';
import { RepositoryKeyFile, repositoryKeyPath } from './repository-key-file.js';
import { type RunningServer, type ServerOptions, startServer } from './server.js';
import { createToken, readTokens } from './token-store.js';

/**
 * Everything `diskvault server` does between parsing flags and serving: the data folder, storage, the
 * repository, the first admin token, the listening socket. Tests call it in-process with the same code.
 */
export interface ServiceOptions extends Omit<ServerConfig, 'tls'> {
  tls?: { cert: Buffer | string; key: Buffer | string };
  /** Tests wrap storage (fault injection) or pass it ready-made (S3 with explicit credentials). */
  storage?: StorageAdapter;
  chunker?: ChunkerParams;
  now?: () => number;
  log?: (line: string) => void;
  server?: Partial<ServerOptions>;
}

export interface RunningService extends RunningServer {
  repo: RepositoryApi;
  storage: StorageAdapter;
  /** Only on the first start of an empty data folder: the admin token, also in <data>/admin.token. */
  createdAdminToken?: string;
  /** Stops the HTTP server, then closes the repository and storage. */
  stop(graceMs?: number): Promise<void>;
}

export const ADMIN_TOKEN_FILE = 'admin.token';

/** The first start creates a global admin token; later starts leave tokens alone. */
export async function ensureAdminToken(dataDir: string): Promise<string | undefined> {
  if ((await readTokens(dataDir)) !== undefined) return undefined;
  const { token } = await createToken(dataDir, { role: 'admin' });
  const path = join(dataDir, ADMIN_TOKEN_FILE);
  await writeFileAtomic(path, `${token}\n`, 0o600);
  await chmod(path, 0o600);
  return token;
}

export async function readAdminTokenFile(dataDir: string): Promise<string> {
  return (await readFile(join(dataDir, ADMIN_TOKEN_FILE), 'utf8')).trim();
}

export async function startService(opts: ServiceOptions): Promise<RunningService> {
  const log = opts.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  await mkdir(opts.dataDir, { recursive: true, mode: 0o700 });
  const warn = (msg: string) => log(JSON.stringify({ level: 'warn', msg }));
  await restrictFolder(opts.dataDir, 'data folder', warn);
  const createdAdminToken = await ensureAdminToken(opts.dataDir);
  const storage =
    opts.storage ??
    (await openStorage(
      opts.s3 ? { kind: 's3', ...opts.s3 } : { kind: 'local', root: join(opts.dataDir, 'storage') },
    ));
  if (!opts.storage && !opts.s3) await restrictFolder(join(opts.dataDir, 'storage'), 'storage folder', warn);
  const keyPath = repositoryKeyPath(opts.dataDir, opts.repositoryKeyFile);
  let repo: Repository;
  try {
    repo = await Repository.open({
      storage,
      keyStore: new RepositoryKeyFile(keyPath.path, keyPath.given),
      encryption: opts.encryption ?? 'aes-256-gcm',
      indexPath: join(opts.dataDir, 'index.sqlite'),
      ...(opts.cacheBytes !== undefined ? { cacheBytes: opts.cacheBytes } : {}),
      ...(opts.gcGraceMs !== undefined ? { gcGraceMs: opts.gcGraceMs } : {}),
      ...(opts.sessionLeaseMs !== undefined ? { sessionLeaseMs: opts.sessionLeaseMs } : {}),
      ...(opts.clockSkewMs !== undefined ? { clockSkewMs: opts.clockSkewMs } : {}),
      ...(opts.sessionMaxAgeMs !== undefined ? { sessionMaxAgeMs: opts.sessionMaxAgeMs } : {}),
      ...(opts.chunker ? { chunker: opts.chunker } : {}),
      ...(opts.now ? { now: opts.now } : {}),
      log: (msg: string) => log(JSON.stringify({ level: 'info', msg })),
    });
  } catch (err) {
    await storage.close().catch(() => {});
    throw err;
  }
  let running: RunningServer;
  try {
    running = await startServer({
      repo,
      dataDir: opts.dataDir,
      host: opts.host,
      port: opts.port,
      log,
      ...(opts.tls ? { tls: opts.tls } : {}),
      ...(opts.maxSessionsPerToken !== undefined ? { maxSessionsPerToken: opts.maxSessionsPerToken } : {}),
      ...(opts.streams === false ? { chunkStream: false, chunkFetchStream: false } : {}),
      ...opts.server,
    });
  } catch (err) {
    await repo.close().catch(() => {});
    await storage.close().catch(() => {});
    throw err;
  }
  // Tokens are bearer credentials: beyond loopback, plain http hands them to anyone on the network path.
  if (!opts.tls && !isLoopbackHost(opts.host ?? '127.0.0.1'))
    warn(
      `listening on ${running.url} without TLS: tokens and backups cross the network readable by anyone on the path; give --tls-cert and --tls-key, or listen on 127.0.0.1 behind a TLS proxy`,
    );
  let stopping: Promise<void> | undefined;
  const stop = (graceMs?: number) => {
    stopping ??= (async () => {
      await running.close(graceMs);
      await repo.close();
      await storage.close();
    })();
    return stopping;
  };
  return { ...running, repo, storage, stop, ...(createdAdminToken ? { createdAdminToken } : {}) };
}
