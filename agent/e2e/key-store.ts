import { closeSync, fsyncSync, openSync, readFileSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { UsageError } from '../../common/cli.js';
import { type KeyFile, KeyFileError, type KeySlot, openKeyFile, parseKeyFile } from '../key-file.js';
import { deriveE2eKeys, type E2eKeys } from './e2e-keys.js';
import { type PassphraseSources, passphraseFor } from './passphrase.js';

/** Key files on disk: read, opened with a passphrase, and written atomically with mode 0600. */

export const KEY_FILE_MODE = 0o600;

export function readKeyFile(path: string): KeyFile {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new UsageError(
      code === 'ENOENT'
        ? `the key file ${path} does not exist`
        : `cannot read the key file ${path}: ${(err as Error).message}`,
    );
  }
  return parseKeyFile(text, path);
}

/**
 * Writes `file` to `path` as a whole or not at all: a temporary file beside it (mode 0600 from its
 * creation, never readable by others for a moment), fsync, rename over, fsync the directory. `exclusive`
 * refuses to replace an existing file (key create never overwrites a key).
 */
export function writeKeyFileAtomic(path: string, file: KeyFile, opts: { exclusive?: boolean } = {}): void {
  if (opts.exclusive) {
    // Claims the name first, so two creates cannot both succeed and nothing existing is ever replaced.
    try {
      closeSync(openSync(path, 'wx', KEY_FILE_MODE));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST')
        throw new UsageError(`${path} already exists; a key file is never overwritten`);
      throw err;
    }
  }
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${Date.now()}.tmp`);
  try {
    const fd = openSync(tmp, 'wx', KEY_FILE_MODE);
    try {
      writeSync(fd, `${JSON.stringify(file, null, 2)}\n`);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
  } catch (err) {
    for (const leftover of opts.exclusive ? [tmp, path] : [tmp]) {
      try {
        unlinkSync(leftover);
      } catch {
        // Already gone.
      }
    }
    throw err;
  }
  try {
    const dfd = openSync(dirname(path), 'r');
    try {
      fsyncSync(dfd);
    } finally {
      closeSync(dfd);
    }
  } catch {
    // Some filesystems refuse fsync on a directory; the rename itself is atomic.
  }
}

export interface OpenedKey {
  path: string;
  file: KeyFile;
  master: Buffer;
  slot: KeySlot;
  keys: E2eKeys;
}

/** Reads and opens a key file; a wrong passphrase is a KeyFileError naming the file. */
export async function openKey(path: string, src: PassphraseSources): Promise<OpenedKey> {
  const file = readKeyFile(path);
  const passphrase = await passphraseFor(path, src);
  const { master, slot } = await openKeyFile(file, passphrase, path);
  return { path, file, master, slot, keys: deriveE2eKeys(master) };
}

/** The key file a command was given: --key FILE, else DISKVAULT_KEY; undefined for none. */
export function keyPathOf(
  flag: string | undefined,
  env: NodeJS.ProcessEnv = process.env,
): string | undefined {
  if (flag !== undefined && flag !== '') return flag;
  const fromEnv = env.DISKVAULT_KEY;
  return fromEnv !== undefined && fromEnv !== '' ? fromEnv : undefined;
}

/** The opened key of a command given one (--key / DISKVAULT_KEY), or undefined. */
export async function commandKey(flags: {
  key?: string;
  'password-file'?: string;
}): Promise<E2eKeys | undefined> {
  const path = keyPathOf(flags.key);
  if (path === undefined) return undefined;
  return (await openKey(path, { passwordFile: flags['password-file'] })).keys;
}

export { KeyFileError };
