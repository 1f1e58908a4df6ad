import { chmod, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { REPOSITORY_KEY_BYTES } from '../repo-engine/object-crypto.js';
import type { RepositoryKeyStore } from '../repo-engine/repository-key.js';
import { writeFileAtomic } from './atomic-file.js';

/** The repository key's default place: the server's data folder, mode 0600. */
export const REPOSITORY_KEY_FILE = 'repository.key';
export const REPOSITORY_KEY_ENV = 'DISKVAULT_REPOSITORY_KEY_FILE';

/** The key file a server uses: --repository-key-file, else $DISKVAULT_REPOSITORY_KEY_FILE, else <data>/repository.key. */
export function repositoryKeyPath(dataDir: string, given?: string): { path: string; given: boolean } {
  const explicit = given ?? process.env[REPOSITORY_KEY_ENV];
  return explicit
    ? { path: explicit, given: true }
    : { path: join(dataDir, REPOSITORY_KEY_FILE), given: false };
}

export class RepositoryKeyFileError extends Error {}

/**
 * A repository key in a file: one line of 64 hex digits. Written atomically with mode 0600 (the folder's
 * other files are as private as the operator made them; the key must not be readable by anyone else).
 */
export class RepositoryKeyFile implements RepositoryKeyStore {
  readonly location: string;

  constructor(
    readonly path: string,
    given: boolean,
  ) {
    this.location = given ? path : `${path} (or give --repository-key-file FILE or ${REPOSITORY_KEY_ENV})`;
  }

  async load(): Promise<Buffer | undefined> {
    let text: string;
    try {
      text = await readFile(this.path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new RepositoryKeyFileError(
        `cannot read the repository key ${this.path}: ${(err as Error).message}`,
      );
    }
    const hex = text.trim();
    if (!new RegExp(`^[0-9a-fA-F]{${REPOSITORY_KEY_BYTES * 2}}$`).test(hex))
      throw new RepositoryKeyFileError(
        `${this.path} does not hold a repository key (one line of ${REPOSITORY_KEY_BYTES * 2} hex digits)`,
      );
    return Buffer.from(hex, 'hex');
  }

  async save(key: Buffer): Promise<void> {
    await writeFileAtomic(this.path, `${key.toString('hex')}\n`, 0o600);
    await chmod(this.path, 0o600);
  }
}
