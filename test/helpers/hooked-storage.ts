import type { StorageAdapter } from '../../storage-adapters/adapter.js';

/** The adapter methods a hook may take over. */
export type StorageHooks = Partial<
  Pick<StorageAdapter, 'put' | 'get' | 'getBytes' | 'stat' | 'delete' | 'deleteMany'>
>;

/**
 * `storage` with some methods taken over by `hooks`, which call `storage` itself for the real work: for a
 * test that must hold, fail or alter one call at a chosen moment (fault-injecting-storage.ts covers faults
 * that stand until lifted). Every other member is the adapter's own.
 */
export function hookedStorage(storage: StorageAdapter, hooks: StorageHooks): StorageAdapter {
  return new Proxy(storage, {
    get(target, prop, receiver) {
      const hook = (hooks as Record<string | symbol, unknown>)[prop];
      if (typeof hook === 'function') return hook;
      const value = Reflect.get(target, prop, receiver);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
}
