import { DiskvaultError } from '../common/errors.js';

/**
 * Where an encrypted repository's key is kept: outside its storage, so that whoever holds the storage
 * (a bucket, a backup of the storage folder) holds nothing readable. The server keeps it in its data folder
 * or a file named by the operator (api/repository-key-file.ts); tests may keep it in memory.
 */
export interface RepositoryKeyStore {
  /** Where the key is expected, as an operator would look for it: a path, with how to give another. */
  readonly location: string;
  /** The key, or undefined when none has been saved there. */
  load(): Promise<Buffer | undefined>;
  /** Saves a newly made key; durable once the promise resolves. */
  save(key: Buffer): Promise<void>;
}

/** An encrypted repository opened without a key. */
export class KeyRequiredError extends DiskvaultError {
  constructor(storage: string, location: string | undefined) {
    super(
      'Unauthorized',
      `the repository on ${storage} is encrypted and its key was not found${location ? `: expected in ${location}` : ''}; without the key its data cannot be read`,
    );
  }
}

/** An encrypted repository opened with a key that does not match its config's check value. */
export class WrongKeyError extends DiskvaultError {
  constructor(storage: string, location: string) {
    super(
      'Unauthorized',
      `the repository key in ${location} is not the key of the repository on ${storage} (its key check value differs)`,
    );
  }
}

/** A key store in memory (tests, benchmarks). */
export class MemoryKeyStore implements RepositoryKeyStore {
  readonly location = 'memory';
  constructor(public key?: Buffer) {}
  async load(): Promise<Buffer | undefined> {
    return this.key;
  }
  async save(key: Buffer): Promise<void> {
    this.key = Buffer.from(key);
  }
}
