import type { SnapshotInfo } from '../../api/protocol.js';
import { InvalidInputError, NotFoundError } from '../../common/errors.js';
import { HEX64 } from '../../repo-engine/manifest-codec.js';
import type { DiskvaultClient } from '../client.js';

/**
 * Turns what a user types into one snapshot: a full id, `latest` (newest of --host/--disk), or an id prefix
 * as `diskvault snapshots` shows it. An ambiguous prefix is an error, never a guess.
 */
export async function selectSnapshot(
  client: Pick<DiskvaultClient, 'getSnapshot' | 'listSnapshots'>,
  spec: string,
  filter: { host?: string; disk?: string },
): Promise<SnapshotInfo> {
  if (HEX64.test(spec)) return await client.getSnapshot(spec);
  if (spec === 'latest') {
    if (!filter.host || !filter.disk) throw new InvalidInputError('`latest` needs --host and --disk');
    const all = await client.listSnapshots(filter);
    const newest = newestOf(all.filter((s) => s.host === filter.host && s.disk === filter.disk));
    if (!newest) throw new NotFoundError(`no snapshot of host ${filter.host} disk ${filter.disk}`);
    return newest;
  }
  if (!/^[0-9a-f]{4,63}$/.test(spec))
    throw new InvalidInputError(`'${spec}' is neither a snapshot id, an id prefix, nor 'latest'`);
  const found = (await client.listSnapshots(filter)).filter((s) => s.id.startsWith(spec));
  if (found.length === 0) throw new NotFoundError(`no snapshot id starts with ${spec}`);
  if (found.length > 1)
    throw new InvalidInputError(`${found.length} snapshots start with ${spec}: give more of the id`);
  return found[0];
}

export function newestOf(snapshots: SnapshotInfo[]): SnapshotInfo | undefined {
  let best: SnapshotInfo | undefined;
  for (const s of snapshots) if (!best || Date.parse(s.time) > Date.parse(best.time)) best = s;
  return best;
}
