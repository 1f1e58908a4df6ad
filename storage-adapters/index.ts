import { InvalidInputError } from '../common/errors.js';
import type { StorageAdapter } from './adapter.js';
import { type LocalStorageOptions, openLocalStorage } from './local.js';
import { openS3Storage, type S3StorageOptions } from './s3.js';

export type { ByteRange, ListEntry, StorageAdapter } from './adapter.js';
export type { LocalStorageOptions } from './local.js';
export type { S3StorageOptions } from './s3.js';

/** Where the repository keeps its blobs: the server's configuration picks one. */
export type StorageConfig =
  | ({ kind: 'local'; root: string } & LocalStorageOptions)
  | ({ kind: 's3' } & S3StorageOptions);

export async function openStorage(config: StorageConfig): Promise<StorageAdapter> {
  switch (config?.kind) {
    case 'local': {
      const { kind: _kind, root, ...options } = config;
      if (!root) throw new InvalidInputError('local storage needs a root folder');
      return openLocalStorage(root, options);
    }
    case 's3': {
      const { kind: _kind, ...options } = config;
      return openS3Storage(options);
    }
    default:
      throw new InvalidInputError(
        `unknown storage kind ${JSON.stringify((config as { kind?: unknown })?.kind)}`,
      );
  }
}
