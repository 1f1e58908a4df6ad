import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { ConfigError } from '../common/cli.js';
import { parseListen, parseSize } from '../common/units.js';
import { parseFixedDurationMs } from '../repo-engine/durations.js';
import { DEFAULT_PORT } from './protocol.js';

/**
 * `diskvault server` settings: flags, and the same keys in a JSON config file (--config FILE). Flags win.
 * Kept free of I/O beyond reading the config file, so the parsing is testable on its own.
 */
export interface ServerConfig {
  host: string;
  port: number;
  dataDir: string;
  s3?: { endpoint?: string; region: string; bucket: string; prefix?: string; forcePathStyle: boolean };
  tls?: { certFile: string; keyFile: string };
  cacheBytes?: number;
  gcGraceMs?: number;
  sessionLeaseMs?: number;
  /** How far a snapshot's time may lie ahead of the server's clock (repo-engine/snapshot-time.ts). */
  clockSkewMs?: number;
  /** An upload session ends this long after it began, however busy (default 24 h). */
  sessionMaxAgeMs?: number;
  /** Open upload sessions, and separately snapshot leases, one token may hold (default 16). */
  maxSessionsPerToken?: number;
  /** HTTP deadlines (api/server.ts): a request head, a whole request, a silent socket. */
  server?: { headersTimeoutMs?: number; requestTimeoutMs?: number; idleTimeoutMs?: number };
  /** Chunker of a repository created by this start; an existing repository keeps its own. */
  chunker?: { min: number; avg: number; max: number };
  /** The repository key's file when not <data>/repository.key (also $DISKVAULT_REPOSITORY_KEY_FILE). */
  repositoryKeyFile?: string;
  /** Encryption of a repository created by this start (default aes-256-gcm); an existing one keeps its own. */
  encryption?: 'aes-256-gcm' | 'none';
  /**
   * False: the upload and fetch streams (HTTP upgrades) are neither offered nor served, so agents send and
   * fetch one request per chunk: for a proxy in front of the server that does not pass upgrades on.
   */
  streams?: boolean;
}

export const SERVER_OPTIONS = {
  config: { type: 'string' },
  listen: { type: 'string' },
  data: { type: 'string' },
  's3-endpoint': { type: 'string' },
  's3-region': { type: 'string' },
  's3-bucket': { type: 'string' },
  's3-prefix': { type: 'string' },
  's3-path-style': { type: 'boolean' },
  'tls-cert': { type: 'string' },
  'tls-key': { type: 'string' },
  'cache-size': { type: 'string' },
  'gc-grace': { type: 'string' },
  'session-lease': { type: 'string' },
  'clock-skew': { type: 'string' },
  'session-max-age': { type: 'string' },
  'max-sessions-per-token': { type: 'string' },
  'chunk-avg': { type: 'string' },
  'repository-key-file': { type: 'string' },
  encryption: { type: 'string' },
  'headers-timeout': { type: 'string' },
  'request-timeout': { type: 'string' },
  'idle-timeout': { type: 'string' },
  'no-streams': { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

type Key = Exclude<keyof typeof SERVER_OPTIONS, 'config' | 'help'>;

export function parseDuration(text: string, what: string): number {
  try {
    return parseFixedDurationMs(text);
  } catch {
    throw new ConfigError(`invalid ${what} ${JSON.stringify(text)}: expected a form like 30m, 24h or 2d`);
  }
}

function readConfigFile(path: string): Partial<Record<Key, string | boolean>> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new ConfigError(`cannot read config file ${path}: ${(err as Error).message}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed))
    throw new ConfigError(`${path} must hold a JSON object`);
  const out: Partial<Record<Key, string | boolean>> = {};
  for (const [k, v] of Object.entries(parsed)) {
    const spec = (SERVER_OPTIONS as Record<string, { type: string }>)[k];
    if (!spec || k === 'config' || k === 'help')
      throw new ConfigError(`${path}: unknown key ${JSON.stringify(k)}`);
    // Numbers are accepted for sizes and durations given in bytes or milliseconds.
    const value = typeof v === 'number' ? String(v) : v;
    if (spec.type === 'boolean' ? typeof value !== 'boolean' : typeof value !== 'string') {
      throw new ConfigError(`${path}: ${k} must be a ${spec.type}`);
    }
    out[k as Key] = value as string | boolean;
  }
  return out;
}

export function parseServerArgs(argv: string[]): { help: true } | { help: false; config: ServerConfig } {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({ args: argv, options: SERVER_OPTIONS, allowPositionals: false, strict: true }));
  } catch (err) {
    throw new ConfigError((err as Error).message);
  }
  if (values.help) return { help: true };
  const file = typeof values.config === 'string' ? readConfigFile(values.config) : {};
  const get = (k: Key) => (values[k] !== undefined ? values[k] : file[k]);
  const str = (k: Key) => {
    const v = get(k);
    return typeof v === 'string' ? v : undefined;
  };

  const listen = parseListen(str('listen') ?? `127.0.0.1:${DEFAULT_PORT}`);
  const config: ServerConfig = { ...listen, dataDir: resolve(str('data') ?? 'diskvault-data') };
  const bucket = str('s3-bucket');
  const s3Given = ['s3-endpoint', 's3-region', 's3-prefix', 's3-path-style'].some(
    (k) => get(k as Key) !== undefined,
  );
  if (bucket) {
    config.s3 = {
      bucket,
      region: str('s3-region') ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? 'us-east-1',
      forcePathStyle: get('s3-path-style') === true,
      ...(str('s3-endpoint') ? { endpoint: str('s3-endpoint') } : {}),
      ...(str('s3-prefix') ? { prefix: str('s3-prefix') } : {}),
    };
  } else if (s3Given) {
    throw new ConfigError('S3 options need --s3-bucket');
  }
  const cert = str('tls-cert');
  const key = str('tls-key');
  if (Boolean(cert) !== Boolean(key)) throw new ConfigError('--tls-cert and --tls-key go together');
  if (cert && key) config.tls = { certFile: resolve(cert), keyFile: resolve(key) };
  const cache = str('cache-size');
  if (cache !== undefined) config.cacheBytes = parseSize(cache);
  const grace = str('gc-grace');
  if (grace !== undefined) config.gcGraceMs = parseDuration(grace, '--gc-grace');
  const lease = str('session-lease');
  if (lease !== undefined) config.sessionLeaseMs = parseDuration(lease, '--session-lease');
  const skew = str('clock-skew');
  if (skew !== undefined) config.clockSkewMs = parseDuration(skew, '--clock-skew');
  const maxAge = str('session-max-age');
  if (maxAge !== undefined) config.sessionMaxAgeMs = parseDuration(maxAge, '--session-max-age');
  const perToken = str('max-sessions-per-token');
  if (perToken !== undefined) {
    if (!/^\d+$/.test(perToken) || Number(perToken) < 1 || Number(perToken) > 100_000)
      throw new ConfigError(`--max-sessions-per-token ${perToken}: a whole number from 1 to 100000`);
    config.maxSessionsPerToken = Number(perToken);
  }
  const deadlines: NonNullable<ServerConfig['server']> = {};
  const headers = str('headers-timeout');
  if (headers !== undefined) deadlines.headersTimeoutMs = parseDuration(headers, '--headers-timeout');
  const request = str('request-timeout');
  if (request !== undefined) deadlines.requestTimeoutMs = parseDuration(request, '--request-timeout');
  const idle = str('idle-timeout');
  if (idle !== undefined) deadlines.idleTimeoutMs = parseDuration(idle, '--idle-timeout');
  if (Object.keys(deadlines).length > 0) config.server = deadlines;
  const keyFile = str('repository-key-file');
  if (keyFile !== undefined) config.repositoryKeyFile = resolve(keyFile);
  const encryption = str('encryption');
  if (encryption !== undefined) {
    if (encryption !== 'aes-256-gcm' && encryption !== 'none')
      throw new ConfigError(`--encryption ${encryption}: aes-256-gcm or none`);
    config.encryption = encryption;
  }
  if (get('no-streams') === true) config.streams = false;
  const avg = str('chunk-avg');
  if (avg !== undefined) {
    const n = parseSize(avg);
    // FastCDC's normalisation wants min = avg/4 and max = 4*avg; the avg must be a power of two.
    if (n < 16 * 1024 || n > 16 * 1024 * 1024 || (n & (n - 1)) !== 0)
      throw new ConfigError(`--chunk-avg ${avg}: a power of two from 16K to 16M`);
    config.chunker = { min: n / 4, avg: n, max: n * 4 };
  }
  return { help: false, config };
}

export const SERVER_USAGE = `usage: diskvault server [options]

  --listen HOST:PORT     address to serve on (default 127.0.0.1:${DEFAULT_PORT}; port 0 picks one)
  --data DIR             tokens, index and local storage (default ./diskvault-data)
  --config FILE          JSON file with the same keys as these flags (flags win)
  --s3-bucket B          store chunks and manifests in S3 instead of DIR/storage
  --s3-endpoint URL      S3-compatible endpoint (MinIO, Ceph, ...)
  --s3-region R          region (default $AWS_REGION or us-east-1)
  --s3-prefix P          key prefix inside the bucket
  --s3-path-style        path-style URLs (most non-AWS servers)
  --tls-cert FILE        PEM certificate: serve HTTPS
  --tls-key FILE         PEM private key
  --cache-size BYTES     chunk read cache (e.g. 256M, 1G)
  --gc-grace DURATION    unreferenced chunks younger than this survive gc (e.g. 24h, 2d)
  --clock-skew DURATION  a snapshot time this far ahead of the server's clock is accepted (default 5m)
  --session-lease DURATION  an idle upload session or unrenewed snapshot lease expires after this (15m)
  --session-max-age DURATION  an upload session ends this long after it began, however busy (24h)
  --max-sessions-per-token N  open upload sessions, and separately snapshot leases, per token (16)
  --headers-timeout DURATION  a request head must arrive within this (default 30s)
  --request-timeout DURATION  a whole request (default 60m; chunk uploads at most 5m)
  --idle-timeout DURATION     a socket silent this long is closed (default 2m)
  --no-streams           offer no upload or fetch stream (HTTP upgrades): agents then send and fetch
                         one request per chunk, slower; for a proxy that does not pass upgrades on
  --chunk-avg BYTES      average chunk size of a NEW repository (default 1M; min avg/4, max 4*avg);
                         fixed at creation, since changing it would break dedup
  --repository-key-file FILE  the repository key (default DIR/repository.key, made with a new
                         repository; also $DISKVAULT_REPOSITORY_KEY_FILE). Without it an encrypted
                         repository cannot be read: keep a copy ('diskvault server key show')
  --encryption aes-256-gcm|none  encryption of a NEW repository (default aes-256-gcm); none makes a
                         plaintext (format 1) repository

S3 credentials come from the standard AWS environment variables or profile.

       diskvault server key show [--data DIR] [--repository-key-file FILE]
prints the repository key, for safekeeping away from the storage.
`;
