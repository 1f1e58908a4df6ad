import type { Readable } from 'node:stream';

/**
 * A store of immutable blobs under string keys. Storage knows nothing of chunks or manifests.
 *
 * Keys: 1..1024 characters from [A-Za-z0-9._/-], no leading '/', no empty segment, no '.' or '..'
 * segment, no backslash, no NUL. `validateKey` enforces it for every adapter, so a key can never escape
 * an adapter's root.
 *
 * Errors: a missing key on `get`/`getBytes` throws NotFoundError (errors.ts); a full disk or
 * quota throws StorageFullError; everything else is rethrown. "Absent" is only ever reported for a key
 * that is truly absent, never for a permission or I/O error.
 */
export interface ByteRange {
  /** First byte, inclusive. */
  start: number;
  /** Last byte, inclusive (HTTP Range semantics). Omitted: to the end. */
  end?: number;
}

/** Returns a Buffer of exactly `length` bytes whose content may be garbage. */
export type BufferAllocator = (length: number) => Buffer;

export interface ListEntry {
  key: string;
  size: number;
  /** Last modification time, ms since the epoch (gc uses it for the grace period of orphans). */
  mtimeMs: number;
}

export interface StorageAdapter {
  /** A short name for logs: 'local:/srv/dv' or 's3://bucket/prefix'. */
  readonly description: string;
  /**
   * Atomic: a reader sees the old object, or the whole new one, never a part. Once the promise has
   * resolved, the adapter holds no reference to `data`: the engine reuses the buffer for the next object.
   */
  put(key: string, data: Uint8Array | Readable): Promise<void>;
  get(key: string, range?: ByteRange): Promise<Readable>;
  /**
   * The object (or the range) as one Buffer. With `alloc`, the adapter asks it for a buffer of the length to
   * be read (once it knows that length) and reads into it, so the result lies in that memory: the engine
   * passes recycled buffers.
   */
  getBytes(key: string, range?: ByteRange, alloc?: BufferAllocator): Promise<Buffer>;
  /** Size and mtime, or undefined when the key is absent. */
  stat(key: string): Promise<{ size: number; mtimeMs: number } | undefined>;
  /** Idempotent: deleting an absent key succeeds. */
  delete(key: string): Promise<void>;
  deleteMany(keys: string[]): Promise<void>;
  /**
   * Every key starting with `prefix` (a plain string prefix, not a folder), in pages, never all held in
   * memory. The listing is complete or it throws: a listing that fails half way never ends quietly.
   */
  list(prefix: string): AsyncIterable<ListEntry>;
  close(): Promise<void>;
}

const KEY_PATTERN = /^[A-Za-z0-9._\-/]{1,1024}$/;

export function validateKey(key: string): void {
  if (typeof key !== 'string' || !KEY_PATTERN.test(key)) {
    throw new InvalidKey(key);
  }
  for (const segment of key.split('/')) {
    if (segment === '' || segment === '.' || segment === '..') throw new InvalidKey(key);
  }
}

import { InvalidInputError } from '../common/errors.js';

class InvalidKey extends InvalidInputError {
  constructor(key: unknown) {
    super(`invalid storage key ${JSON.stringify(String(key).slice(0, 200))}`);
  }
}
