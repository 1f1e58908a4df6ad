import { type ParseArgsConfig, parseArgs } from 'node:util';
import { isDiskvaultError } from './errors.js';

/**
 * What every command line (agent and server) shares: usage errors and the one mapping from errors to exit
 * codes.
 *
 * Exit codes (docs/backup.md and docs/restore.md): 0 success, 1 failure, 2 usage, 3 completed with unreadable ranges,
 * 130 ended by Ctrl-C.
 */
export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;
export const EXIT_UNREADABLE = 3;
/** A command ended by Ctrl-C (128 + SIGINT), as shells report it. */
export const EXIT_INTERRUPTED = 130;

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** Prints a one-line message for the user (never a stack trace) and returns the exit code. */
export function reportError(err: unknown, command: string): number {
  if (err instanceof UsageError) {
    process.stderr.write(`diskvault ${command}: ${err.message}\nRun 'diskvault help' for usage.\n`);
    return EXIT_USAGE;
  }
  if (isDiskvaultError(err)) {
    process.stderr.write(`diskvault ${command}: ${err.message}\n`);
    return EXIT_FAILURE;
  }
  const e = err as NodeJS.ErrnoException;
  const text = e?.code ? `${e.message} (${e.code})` : String(e?.message ?? err);
  process.stderr.write(`diskvault ${command}: ${text}\n`);
  if (process.env.DISKVAULT_DEBUG) process.stderr.write(`${e?.stack ?? ''}\n`);
  return EXIT_FAILURE;
}

/** A setting that cannot be used (a bad value in flags or a config file); commands report it as a usage error. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

/**
 * A command's flags and positionals (node:util parseArgs, strict); an unknown flag or a missing value is a
 * UsageError, reported as one line and exit 2 like every other usage mistake.
 */
export function parseCommandLine<O extends NonNullable<ParseArgsConfig['options']>>(
  argv: string[],
  options: O,
) {
  try {
    return parseArgs({ args: argv, allowPositionals: true, strict: true, options });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}
