import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import type { ParseArgsConfig } from 'node:util';
import { parseCommandLine, UsageError } from '../common/cli.js';
import { parseRate } from './rate-limit.js';

// What every client command shares: its flags, how they parse, and where the server address and token come
// from. Exit codes, usage errors and the error-to-exit-code mapping are in common/cli.ts.

/**
 * A command's flags (CLIENT_OPTIONS plus its own) and positionals; an unknown or malformed flag is a usage
 * error (exit 2), not a stack trace.
 */
export function parseCommandArgs<O extends NonNullable<ParseArgsConfig['options']>>(
  argv: string[],
  options: O,
) {
  return parseCommandLine(argv, { ...CLIENT_OPTIONS, ...options });
}

/** The flags every command that talks to a server takes (parseArgs options), so all of them spell them alike. */
export const CLIENT_OPTIONS = {
  server: { type: 'string' },
  token: { type: 'string' },
  config: { type: 'string' },
  cacert: { type: 'string', multiple: true },
  'limit-upload': { type: 'string' },
  'limit-download': { type: 'string' },
  host: { type: 'string' },
  disk: { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

export interface ClientConfig {
  server: string;
  token: string;
  /** PEM certificates to trust instead of the system's for an https server; empty for the system's. */
  ca: Buffer[];
  /** Bytes per second, or null for no limit. */
  limitUpload: number | null;
  limitDownload: number | null;
}

/**
 * Server and token, first found wins: flags, then DISKVAULT_SERVER / DISKVAULT_TOKEN, then the config file
 * (--config FILE, else $DISKVAULT_CONFIG, else ~/.config/diskvault/agent.json: {"server": ..., "token": ...}).
 * A token may also be given as a file: DISKVAULT_TOKEN_FILE or "tokenFile" in the config file.
 * Bandwidth limits: --limit-upload / --limit-download, else "limitUpload" / "limitDownload" in the config file.
 * Certificates to trust (restic's --cacert): --cacert FILE (repeatable), else DISKVAULT_CACERT, else "cacert"
 * in the config file (a path or a list of paths).
 */
export function resolveClientConfig(flags: {
  server?: string;
  token?: string;
  config?: string;
  cacert?: string[];
  'limit-upload'?: string;
  'limit-download'?: string;
}): ClientConfig {
  const path =
    flags.config ?? process.env.DISKVAULT_CONFIG ?? join(homedir(), '.config', 'diskvault', 'agent.json');
  let file: Record<string, unknown> = {};
  try {
    file = JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (flags.config || (code !== 'ENOENT' && code !== 'ENOTDIR')) {
      throw new UsageError(`cannot read config file ${path}: ${(err as Error).message}`);
    }
  }
  const tokenFile =
    process.env.DISKVAULT_TOKEN_FILE ?? (typeof file.tokenFile === 'string' ? file.tokenFile : undefined);
  const server =
    flags.server ??
    process.env.DISKVAULT_SERVER ??
    (typeof file.server === 'string' ? file.server : undefined);
  let token =
    flags.token ?? process.env.DISKVAULT_TOKEN ?? (typeof file.token === 'string' ? file.token : undefined);
  if (!token && tokenFile) token = readFileSync(tokenFile, 'utf8').trim();
  if (!server) throw new UsageError('no server: give --server URL, or set DISKVAULT_SERVER');
  if (!token) throw new UsageError('no token: give --token T, or set DISKVAULT_TOKEN');
  try {
    new URL(server);
  } catch {
    throw new UsageError(`--server ${server} is not a URL (http://host:8420)`);
  }
  return {
    server: server.replace(/\/+$/, ''),
    token,
    ca: trustedCertificates(flags.cacert, file.cacert, path),
    limitUpload: rateSetting(flags['limit-upload'], file.limitUpload, '--limit-upload', 'limitUpload', path),
    limitDownload: rateSetting(
      flags['limit-download'],
      file.limitDownload,
      '--limit-download',
      'limitDownload',
      path,
    ),
  };
}

/** The certificates named by --cacert, else DISKVAULT_CACERT, else the config file's "cacert", read and checked. */
export function trustedCertificates(
  flags: string[] | undefined,
  fromFile: unknown,
  configPath: string,
): Buffer[] {
  let files: string[];
  if (flags?.length) files = flags;
  else if (process.env.DISKVAULT_CACERT) files = [process.env.DISKVAULT_CACERT];
  else if (fromFile === undefined || fromFile === null) files = [];
  else if (typeof fromFile === 'string') files = [fromFile];
  else if (Array.isArray(fromFile) && fromFile.every((f) => typeof f === 'string')) files = fromFile;
  else throw new UsageError(`"cacert" in ${configPath} must be a file name or a list of them`);
  return files.map((file) => {
    let pem: Buffer;
    try {
      pem = readFileSync(file);
    } catch (err) {
      throw new UsageError(`cannot read the CA certificate ${file}: ${(err as Error).message}`);
    }
    try {
      new X509Certificate(pem);
    } catch {
      throw new UsageError(`${file} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)`);
    }
    return pem;
  });
}

/** A bandwidth limit from its flag, else from the config file (a string like the flag's, or a number of KiB/s). */
function rateSetting(
  flag: string | undefined,
  fromFile: unknown,
  flagName: string,
  key: string,
  configPath: string,
): number | null {
  let text: string;
  let where: string;
  if (flag !== undefined) [text, where] = [flag, flagName];
  else if (fromFile === undefined || fromFile === null) return null;
  else if (typeof fromFile === 'string' || typeof fromFile === 'number')
    [text, where] = [String(fromFile), `"${key}" in ${configPath}`];
  else throw new UsageError(`"${key}" in ${configPath} must be a string like "20M" or a number of KiB/s`);
  try {
    return parseRate(text);
  } catch (err) {
    throw new UsageError(`${where}: ${(err as Error).message}`);
  }
}
