import { MANIFEST_ENTRY_BYTES, ManifestReader } from '../../repo-engine/manifest-codec.js';
import type { DiskvaultClient } from '../client.js';
import type { IdSet } from './id-set.js';

/**
 * Loads the chunk ids of a previous snapshot into `known`, so the chunks a disk kept since last night are
 * never even asked about. If one of them was deleted since (forget + gc), the commit names it and the
 * backup uploads it then: the known-set is a hint, the server's commit check is the truth.
 */
export async function seedKnownSet(
  client: DiskvaultClient,
  snapshotId: string,
  known: IdSet,
): Promise<number> {
  const stream = await client.getManifest(snapshotId);
  try {
    const reader = await ManifestReader.open(stream, 'wire');
    let n = 0;
    for await (const batch of reader.entryBatches(16384)) {
      for (let at = 0; at < batch.length; at += MANIFEST_ENTRY_BYTES) {
        known.add(batch, at);
        n++;
      }
    }
    return n;
  } finally {
    stream.destroy();
  }
}
