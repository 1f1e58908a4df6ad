import { Readable } from 'node:stream';
import { NotFoundError } from '../../common/errors.js';
import {
  type BufferAllocator,
  type ByteRange,
  type ListEntry,
  type StorageAdapter,
  validateKey,
} from '../../storage-adapters/adapter.js';
import { checkRange, clampRange, validateListPrefix } from '../../storage-adapters/adapter-support.js';

/**
 * A StorageAdapter held in a Map: fast enough for randomized engine tests with thousands of operations.
 * It passes the storage contract like the real adapters (test/storage/memory.test.ts) and counts reads so
 * tests can prove the chunk cache works.
 */
export class MemoryStorage implements StorageAdapter {
  readonly description = 'memory:';
  readonly objects = new Map<string, { data: Buffer; mtimeMs: number }>();
  reads = 0;
  /** Lets a test make objects look old (orphan grace period) without waiting. */
  clock: () => number = () => Date.now();

  async put(key: string, data: Uint8Array | Readable): Promise<void> {
    validateKey(key);
    let bytes: Buffer;
    if (data instanceof Readable) {
      const parts: Buffer[] = [];
      for await (const p of data) parts.push(Buffer.from(p as Uint8Array));
      bytes = Buffer.concat(parts);
    } else {
      bytes = Buffer.from(data);
    }
    // Set only after the whole body arrived: a failed stream leaves the old object untouched.
    this.objects.set(key, { data: bytes, mtimeMs: this.clock() });
  }

  async get(key: string, range?: ByteRange): Promise<Readable> {
    return Readable.from([await this.getBytes(key, range)]);
  }

  async getBytes(key: string, range?: ByteRange, alloc?: BufferAllocator): Promise<Buffer> {
    validateKey(key);
    if (range) checkRange(range);
    const o = this.objects.get(key);
    if (!o) throw new NotFoundError(`no object ${key}`);
    this.reads++;
    const { start, end } = range
      ? clampRange(range, o.data.length, key)
      : { start: 0, end: o.data.length - 1 };
    const length = Math.max(0, end - start + 1);
    const out = alloc ? alloc(length) : Buffer.allocUnsafe(length);
    o.data.copy(out, 0, start, start + length);
    return out;
  }

  async stat(key: string): Promise<{ size: number; mtimeMs: number } | undefined> {
    validateKey(key);
    const o = this.objects.get(key);
    return o ? { size: o.data.length, mtimeMs: o.mtimeMs } : undefined;
  }

  async delete(key: string): Promise<void> {
    validateKey(key);
    this.objects.delete(key);
  }

  async deleteMany(keys: string[]): Promise<void> {
    for (const k of keys) validateKey(k);
    for (const k of keys) this.objects.delete(k);
  }

  async *list(prefix: string): AsyncIterable<ListEntry> {
    validateListPrefix(prefix);
    const keys = [...this.objects.keys()].filter((k) => k.startsWith(prefix)).sort();
    for (const key of keys) {
      const o = this.objects.get(key);
      if (o) yield { key, size: o.data.length, mtimeMs: o.mtimeMs };
    }
  }

  async close(): Promise<void> {}
}
