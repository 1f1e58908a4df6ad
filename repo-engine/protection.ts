import { ConflictError } from '../common/errors.js';
import type { StorageAdapter } from '../storage-adapters/adapter.js';
import { HEX64 } from './manifest-codec.js';

/**
 * Protected snapshots, as storage holds them: one small object `protected/<snapshot id>` per protected
 * snapshot. Storage is the truth, as for manifests: the index's flag is a copy that a rebuild (and every
 * start) restores from these markers, and a delete looks at the marker too before it removes anything.
 */
export const PROTECTED_PREFIX = 'protected/';

export function protectedKey(id: string): string {
  return `${PROTECTED_PREFIX}${id}`;
}

/** What a refused removal of a protected snapshot throws: 409, with the reason a caller can tell apart. */
export class SnapshotProtectedError extends ConflictError {
  constructor(id: string) {
    super(`snapshot ${id} is protected; unprotect it first`, { snapshot: id, reason: 'protected' });
  }
}

export function isProtectedRefusal(err: unknown): boolean {
  return (
    err instanceof SnapshotProtectedError ||
    ((err as { code?: string; details?: { reason?: unknown } })?.code === 'Conflict' &&
      (err as { details?: { reason?: unknown } }).details?.reason === 'protected')
  );
}

export class ProtectionStore {
  constructor(private readonly storage: StorageAdapter) {}

  async mark(id: string, since: string): Promise<void> {
    await this.storage.put(protectedKey(id), Buffer.from(`${JSON.stringify({ snapshot: id, since })}\n`));
  }

  async unmark(id: string): Promise<void> {
    await this.storage.delete(protectedKey(id));
  }

  async isMarked(id: string): Promise<boolean> {
    return (await this.storage.stat(protectedKey(id))) !== undefined;
  }

  /** Every snapshot id with a marker (a few per repository: they are collected whole). */
  async markedIds(): Promise<Set<string>> {
    const ids = new Set<string>();
    for await (const e of this.storage.list(PROTECTED_PREFIX)) {
      const id = e.key.slice(PROTECTED_PREFIX.length);
      if (HEX64.test(id)) ids.add(id);
    }
    return ids;
  }
}
