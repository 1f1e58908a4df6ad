import v8 from 'node:v8';
import { ConfigError, EXIT_FAILURE, EXIT_OK, UsageError } from '../../common/cli.js';
import { isDiskvaultError } from '../../common/errors.js';
import { parseServerArgs, SERVER_USAGE, type ServerConfig } from '../config.js';
import { RepositoryKeyFileError } from '../repository-key-file.js';
import type { RunningService } from '../service.js';
import { loadTlsCredentials, type TlsCredentials, TlsCredentialsError } from '../tls-credentials.js';
import { DISKVAULT_VERSION } from '../version.js';

/** How long in-flight requests may run after SIGTERM/SIGINT before their connections are cut. */
const SHUTDOWN_GRACE_MS = 10_000;

/** Turns the failures an operator can fix into one sentence; anything else is reported by the dispatcher. */
function explainStartupError(err: unknown, config: ServerConfig): string | undefined {
  const e = err as NodeJS.ErrnoException;
  if (e?.code === 'EADDRINUSE')
    return `cannot listen on ${config.host}:${config.port}: the address is already in use`;
  if (e?.code === 'EADDRNOTAVAIL')
    return `cannot listen on ${config.host}:${config.port}: no such local address`;
  if (e?.code === 'EACCES' && e.syscall === 'listen')
    return `cannot listen on ${config.host}:${config.port}: permission denied`;
  if (e?.code === 'EACCES' || e?.code === 'EPERM' || e?.code === 'ENOTDIR' || e?.code === 'EROFS') {
    return `cannot use data folder ${config.dataDir}: ${e.message}`;
  }
  if (isDiskvaultError(err)) return `cannot open the repository: ${err.message}`;
  if (err instanceof RepositoryKeyFileError) return `cannot open the repository: ${err.message}`;
  if (err instanceof TlsCredentialsError) return err.message;
  return undefined;
}

/**
 * restify 11 touches process.binding('http_parser') when loaded, and Node prints DEP0111 for it on every
 * start; an operator can do nothing about it, so that one warning (only) is dropped.
 */
function silenceRestifyDeprecation(): void {
  const emit = process.emitWarning.bind(process) as (...args: unknown[]) => void;
  process.emitWarning = ((warning: unknown, ...rest: unknown[]) => {
    const code = typeof rest[0] === 'object' ? (rest[0] as { code?: string } | null)?.code : rest[1];
    if (code === 'DEP0111') return;
    emit(warning, ...rest);
  }) as typeof process.emitWarning;
}

/**
 * Turns V8's incremental marking off for the server's process. With it on, a first backup of the 2 GiB
 * benchmark image started about 60 major collections on a heap of 17 MB that each freed almost nothing
 * (17.0 -> 16.8 MB), a fifth of the server's CPU samples in marking and sweeping; with it off, old space is
 * collected when it fills, 3 times in the same backup (docs/performance-notes.md, "Garbage collection"). The cost
 * is that such a collection pauses the process whole: milliseconds per 10 MB of live heap, which a backup
 * server, whose latency no person waits on, can take.
 */
function collectOldSpaceWhenFull(): void {
  v8.setFlagsFromString('--no-incremental-marking');
}

export async function run(argv: string[], _command: string): Promise<number> {
  if (argv[0] === 'key') return (await import('./server-key.js')).run(argv.slice(1));
  collectOldSpaceWhenFull();
  silenceRestifyDeprecation();
  const { ADMIN_TOKEN_FILE, startService } = await import('../service.js');
  let parsed: ReturnType<typeof parseServerArgs>;
  try {
    parsed = parseServerArgs(argv);
  } catch (err) {
    if (err instanceof ConfigError) throw new UsageError(err.message);
    throw err;
  }
  if (parsed.help) {
    process.stdout.write(SERVER_USAGE);
    return EXIT_OK;
  }
  const config = parsed.config;
  let service: RunningService;
  const { tls: tlsFiles, ...rest } = config;
  let tls: TlsCredentials | undefined;
  try {
    tls = tlsFiles ? await loadTlsCredentials(tlsFiles) : undefined;
    service = await startService({ ...rest, ...(tls ? { tls } : {}) });
  } catch (err) {
    const explained = explainStartupError(err, config);
    if (!explained) throw err;
    process.stderr.write(`diskvault server: ${explained}\n`);
    return EXIT_FAILURE;
  }
  // Signals are handled before the first line that says the server listens: a signal sent on seeing that
  // line must find its handler, not node's default (which ends the process at once).
  const stopped = new Promise<number>((resolve) => {
    let stopping = false;
    const onSignal = (signal: NodeJS.Signals) => {
      if (stopping) return;
      stopping = true;
      process.stderr.write(`diskvault server: ${signal} received, finishing in-flight requests\n`);
      service.stop(SHUTDOWN_GRACE_MS).then(
        () => resolve(EXIT_OK),
        (err) => {
          process.stderr.write(`diskvault server: error while closing: ${(err as Error)?.message ?? err}\n`);
          resolve(EXIT_FAILURE);
        },
      );
    };
    process.once('SIGTERM', onSignal);
    process.once('SIGINT', onSignal);
  });
  const running = service;
  process.on('SIGHUP', () => {
    if (!tlsFiles) {
      process.stderr.write('diskvault server: SIGHUP received: no TLS certificate to reload\n');
      return;
    }
    loadTlsCredentials(tlsFiles).then(
      (renewed) => {
        running.setTlsCredentials(renewed);
        process.stderr.write(
          `diskvault server: SIGHUP received: TLS certificate reloaded: ${renewed.description}\n`,
        );
      },
      (err: Error) =>
        process.stderr.write(
          `diskvault server: SIGHUP received: ${err.message}; still serving the previous certificate\n`,
        ),
    );
  });
  if (service.createdAdminToken) {
    process.stdout.write(
      `created the first admin token (shown once; also saved to ${config.dataDir}/${ADMIN_TOKEN_FILE}, mode 0600):\n${service.createdAdminToken}\n`,
    );
  }
  process.stdout.write(
    `diskvault ${DISKVAULT_VERSION} server listening on ${service.url} (storage ${service.storage.description})\n`,
  );
  if (tls) process.stdout.write(`TLS certificate: ${tls.description}\n`);
  if (tls && tls.validTo.getTime() < Date.now())
    process.stderr.write(
      `diskvault server: warning: the TLS certificate expired on ${tls.validTo.toISOString()}\n`,
    );

  return stopped;
}
