import { type Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { DiskvaultError, StorageFullError } from '../../common/errors.js';
import type {
  BufferAllocator,
  ByteRange,
  ListEntry,
  StorageAdapter,
} from '../../storage-adapters/adapter.js';

/**
 * A wrapper for fault tests: it forwards to a real adapter and injects the failures a real store shows
 * (a disk filling up, a delete refused, a listing that breaks half way), so engine and API tests can prove
 * they fail cleanly and recover once the fault is lifted.
 */
export interface Faults {
  /**
   * Capacity in bytes across all puts from now on: the put that would cross it fails with StorageFullError
   * and leaves nothing visible. `setFaults()` without it lifts the limit ("space was freed").
   */
  failPutAfterBytes?: number;
  /** Every delete/deleteMany throws (a permission error, never to be mistaken for "already gone"). */
  failDeletes?: boolean;
  /** A listing throws after yielding this many entries. */
  failListAfterEntries?: number;
  /** Every read (get, getBytes) answers this many milliseconds late: a slow disk or a distant store. */
  delayReadsMs?: number;
}

export interface FaultInjectingStorage extends StorageAdapter {
  /** Replace the active faults; `{}` lifts them all. Resets the byte count. */
  setFaults(faults: Faults): void;
  /** Bytes accepted by puts since the last setFaults. */
  readonly bytesWritten: number;
}

export function withFaults(inner: StorageAdapter, faults: Faults = {}): FaultInjectingStorage {
  return new FaultInjecting(inner, faults);
}

/** The errno error a full disk raises, so the inner adapter's own ENOSPC handling runs as for real. */
function injectedNoSpace(): NodeJS.ErrnoException {
  return Object.assign(new Error('ENOSPC: no space left on device (injected)'), {
    code: 'ENOSPC',
    errno: -28,
  });
}

class FaultInjecting implements FaultInjectingStorage {
  readonly description: string;
  private written = 0;

  constructor(
    private readonly inner: StorageAdapter,
    private faults: Faults,
  ) {
    this.description = `faulty(${inner.description})`;
  }

  get bytesWritten(): number {
    return this.written;
  }

  setFaults(faults: Faults): void {
    this.faults = faults;
    this.written = 0;
  }

  private remaining(): number {
    const limit = this.faults.failPutAfterBytes;
    return limit === undefined ? Number.POSITIVE_INFINITY : limit - this.written;
  }

  async put(key: string, data: Uint8Array | Readable): Promise<void> {
    if (data instanceof Uint8Array) {
      if (data.length > this.remaining()) {
        throw new StorageFullError(`no space left storing ${key} (injected)`, { cause: injectedNoSpace() });
      }
      await this.inner.put(key, data);
      this.written += data.length;
      return;
    }
    let tripped = false;
    let counted = 0;
    const meter = new Transform({
      transform: (part: Buffer, _encoding, callback) => {
        counted += part.length;
        if (counted > this.remaining()) {
          tripped = true;
          callback(injectedNoSpace());
          return;
        }
        callback(null, part);
      },
    });
    // pipeline() carries the source's errors into the inner put and, on an injected fault, stops the
    // source, just as a real failed put would.
    pipeline(data, meter).catch(() => {});
    try {
      await this.inner.put(key, meter);
    } catch (err) {
      if (tripped && !(err instanceof StorageFullError)) {
        throw new StorageFullError(`no space left storing ${key} (injected)`, { cause: err });
      }
      throw err;
    }
    this.written += counted;
  }

  async get(key: string, range?: ByteRange): Promise<Readable> {
    await this.readDelay();
    return this.inner.get(key, range);
  }

  async getBytes(key: string, range?: ByteRange, alloc?: BufferAllocator): Promise<Buffer> {
    await this.readDelay();
    return this.inner.getBytes(key, range, alloc);
  }

  private async readDelay(): Promise<void> {
    const ms = this.faults.delayReadsMs;
    if (ms) await new Promise((resolve) => setTimeout(resolve, ms));
  }

  stat(key: string): Promise<{ size: number; mtimeMs: number } | undefined> {
    return this.inner.stat(key);
  }

  async delete(key: string): Promise<void> {
    if (this.faults.failDeletes) throw deleteRefused(key);
    await this.inner.delete(key);
  }

  async deleteMany(keys: string[]): Promise<void> {
    if (this.faults.failDeletes) throw deleteRefused(keys[0] ?? '');
    await this.inner.deleteMany(keys);
  }

  async *list(prefix: string): AsyncIterable<ListEntry> {
    const limit = this.faults.failListAfterEntries;
    let yielded = 0;
    for await (const entry of this.inner.list(prefix)) {
      if (limit !== undefined && yielded >= limit) {
        throw new DiskvaultError(
          'Unavailable',
          `listing ${prefix} failed after ${yielded} entries (injected)`,
        );
      }
      yield entry;
      yielded++;
    }
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

function deleteRefused(key: string): Error {
  return new DiskvaultError('Forbidden', `delete of ${key} refused: EACCES (injected)`, { key });
}
