import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Calls `probe` every `intervalMs` until `done` accepts what it returns, and returns that; throws naming
 * `what` (and the last value seen) once `timeoutMs` have passed. Tests wait for a state this way instead of
 * sleeping a fixed time, which is either too short on a loaded machine or wasted on an idle one.
 */
export async function pollUntil<T>(
  probe: () => T | Promise<T>,
  done: (value: T) => boolean,
  what: string,
  { timeoutMs = 30_000, intervalMs = 50 }: { timeoutMs?: number; intervalMs?: number } = {},
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (done(value)) return value;
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${JSON.stringify(value)})`);
    }
    await sleep(intervalMs);
  }
}

/**
 * Waits until `probe` gives the same value (compared by `key`) for `quietMs` in a row (a count that stopped
 * growing: the work in flight has drained), and returns it; throws once `timeoutMs` have passed without such
 * a quiet spell.
 */
export async function pollUntilSteady<T>(
  probe: () => T | Promise<T>,
  what: string,
  {
    quietMs = 300,
    timeoutMs = 30_000,
    intervalMs = 50,
    key = (v: T) => JSON.stringify(v),
  }: { quietMs?: number; timeoutMs?: number; intervalMs?: number; key?: (value: T) => string } = {},
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last = await probe();
  let since = Date.now();
  for (;;) {
    await sleep(intervalMs);
    const value = await probe();
    if (key(value) !== key(last)) {
      last = value;
      since = Date.now();
    } else if (Date.now() - since >= quietMs) {
      return value;
    }
    if (Date.now() > deadline) {
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what} to settle (last: ${JSON.stringify(value)})`,
      );
    }
  }
}
