import type { RepositoryApi } from '../../repo-engine/types.js';

/** The lease owner the server's own image streams take (not a token id, so no token's lease limit counts them). */
export const IMAGE_STREAM_LEASE_OWNER = 'server:image-stream';

/**
 * Runs `work` while the snapshot's chunks are held against gc by a snapshot lease, renewed a few times per
 * lease period and released at the end. A download of a whole disk can take hours; a forget and a prune in
 * that time must not delete the chunks it has yet to send.
 */
export async function whileSnapshotHeld<T>(
  repo: RepositoryApi,
  snapshotId: string,
  work: () => Promise<T>,
): Promise<T> {
  const lease = await repo.takeLease(snapshotId, IMAGE_STREAM_LEASE_OWNER);
  const periodMs = Math.max(1_000, Date.parse(lease.expiresAt) - Date.now());
  const renewal = setInterval(() => {
    try {
      repo.renewLease(lease.id);
    } catch {
      // An ended lease cannot be renewed; the stream then fails on the first chunk gc took, as without it.
    }
  }, periodMs / 3);
  renewal.unref();
  try {
    return await work();
  } finally {
    clearInterval(renewal);
    await repo.releaseLease(lease.id).catch(() => {});
  }
}
