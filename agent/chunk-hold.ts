import type { DiskvaultClient } from './client.js';

export interface ChunkHold {
  /** Ends the hold; never throws (a lease that cannot be released ends by itself when it expires). */
  release(): Promise<void>;
  /** The fetch stream protocol the server offered with the lease (common/chunk-stream.ts), if any. */
  fetchStream?: string;
}

type LeaseClient = Pick<DiskvaultClient, 'takeLease' | 'renewLease' | 'releaseLease'>;

/**
 * Keeps the repository from collecting one snapshot's chunks while this process still reads them (a
 * restore, an NBD export): a snapshot lease (docs/api.md, "Snapshot leases"). The server records which
 * snapshot is held and until when, and gc spares that snapshot's chunks even if it is forgotten meanwhile;
 * nothing else is held back. It needs only the right to read the snapshot. The lease is renewed once per
 * third of its length, not per chunk; a renewal the server no longer knows (its lease ended while this
 * process was stalled) takes a new lease if the snapshot still exists. A process that dies leaves the lease
 * to expire. Taking it is best effort: a server or token that refuses it gets a warning, and the read goes
 * on unprotected.
 */
export async function holdSnapshot(
  client: LeaseClient,
  snapshotId: string,
  warn: (message: string) => void,
): Promise<ChunkHold> {
  let lease: { leaseId: string; expiresAt: string; chunkFetchStream?: string };
  try {
    lease = await client.takeLease(snapshotId);
  } catch (err) {
    warn(
      `could not keep gc from collecting this snapshot's chunks while it is read: ${(err as Error).message}`,
    );
    return { release: async () => {} };
  }
  const leaseMs = Date.parse(lease.expiresAt) - Date.now();
  let warned = false;
  let renewing: Promise<void> = Promise.resolve();
  const renew = async () => {
    try {
      lease = await client.renewLease(lease.leaseId);
    } catch (err) {
      const code = (err as { code?: string }).code;
      try {
        if (code !== 'NotFound') throw err;
        lease = await client.takeLease(snapshotId);
      } catch (again) {
        if (warned) return;
        warned = true;
        warn(`renewing the hold on this snapshot's chunks failed: ${(again as Error).message}`);
      }
    }
  };
  const timer = setInterval(
    () => {
      renewing = renewing.then(renew);
    },
    Math.max(1000, Number.isFinite(leaseMs) ? leaseMs / 3 : 60_000),
  );
  timer.unref();
  return {
    ...(lease.chunkFetchStream !== undefined ? { fetchStream: lease.chunkFetchStream } : {}),
    release: async () => {
      clearInterval(timer);
      await renewing;
      await client.releaseLease(lease.leaseId).catch(() => {});
    },
  };
}
