import { ConflictError } from '../common/errors.js';
import type { SnapshotInfo } from '../repo-engine/types.js';

/**
 * Refuses what would need a snapshot's content on the server (its image, a share link to it) when the
 * snapshot is sealed end to end: the server holds no key for it, so the answer is a clear 409 naming
 * what to do instead, never ciphertext served as a disk image.
 */
export function refuseSealedSnapshot(snap: SnapshotInfo, what: string): void {
  if (snap.e2e === undefined) return;
  throw new ConflictError(
    `snapshot ${snap.id} is encrypted end to end (key ${snap.e2e.keyId}): the server cannot serve ${what}; restore it with 'diskvault restore --key FILE' or mount it with 'diskvault nbd --key FILE'`,
    { reason: 'end-to-end', snapshot: snap.id, keyId: snap.e2e.keyId },
  );
}
