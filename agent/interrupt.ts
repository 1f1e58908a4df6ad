import { setMaxListeners } from 'node:events';
import { EXIT_INTERRUPTED } from '../common/cli.js';

/** What an AbortSignal fired by Ctrl-C carries as its reason: the work was stopped on purpose. */
export class InterruptedError extends Error {
  constructor() {
    super('interrupted');
    this.name = 'InterruptedError';
  }
}

export function isInterrupted(err: unknown): boolean {
  return err instanceof InterruptedError;
}

/**
 * Ctrl-C as one AbortSignal for a long command: the first SIGINT fires it (the command winds down cleanly and
 * says so), a second one ends the process at once. `dispose()` gives SIGINT back to node's default.
 */
export function interruptOnSigint(): { signal: AbortSignal; dispose(): void } {
  const controller = new AbortController();
  // Every request in flight listens on it: dozens at once are expected, not a leak.
  setMaxListeners(0, controller.signal);
  const onSigint = () => {
    if (controller.signal.aborted) process.exit(EXIT_INTERRUPTED);
    controller.abort(new InterruptedError());
  };
  process.on('SIGINT', onSigint);
  return {
    signal: controller.signal,
    dispose: () => {
      process.off('SIGINT', onSigint);
    },
  };
}

/**
 * `work`, or the signal's reason as soon as it fires, whichever comes first. `work` goes on in the background
 * (its later failure is ignored): the caller tears down what it runs on.
 */
export function untilAborted<T>(work: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return work;
  work.catch(() => {});
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    work.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}
