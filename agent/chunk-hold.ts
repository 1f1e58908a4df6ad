import type { DiskvaultClient } from './client.js';

export interface ChunkHold {
  /** Ends the hold; never throws (an expired or unreachable session ends by itself at its lease). */
  release(): Promise<void>;
}

/**
 * Keeps the repository from collecting chunks while this process still reads them (a restore, an NBD
 * export). The server's gc keeps every chunk freed after the oldest open session began
 * (docs/repository-format.md, "gc"), so an open session of our own makes a snapshot that an admin forgets
 * meanwhile stay readable until we release it. The session is renewed at a third of its lease with an empty
 * missing query; a process that dies leaves it to expire. Taking the hold is best effort: a server or token
 * that refuses it gets a warning, and the read goes on unprotected, as before.
 */
export async function holdChunks(
  client: Pick<DiskvaultClient, 'createSession' | 'missing' | 'abort'>,
  host: string,
  disk: string,
  warn: (message: string) => void,
): Promise<ChunkHold> {
  let session: { id: string; expiresAt: string };
  try {
    session = await client.createSession(host, disk);
  } catch (err) {
    warn(
      `could not keep gc from collecting this snapshot's chunks while it is read: ${(err as Error).message}`,
    );
    return { release: async () => {} };
  }
  const leaseMs = Date.parse(session.expiresAt) - Date.now();
  let warned = false;
  const timer = setInterval(
    () => {
      client.missing(session.id, []).catch((err: Error) => {
        if (warned) return;
        warned = true;
        warn(`renewing the hold on this snapshot's chunks failed: ${err.message}`);
      });
    },
    Math.max(1000, Number.isFinite(leaseMs) ? leaseMs / 3 : 60_000),
  );
  timer.unref();
  return {
    release: async () => {
      clearInterval(timer);
      await client.abort(session.id).catch(() => {});
    },
  };
}
