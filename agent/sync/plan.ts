import type { SnapshotInfo } from '../../api/protocol.js';

/**
 * What a sync does, decided from the two listings alone: which source snapshots the destination lacks
 * (oldest first, so an interrupted sync leaves the destination with a complete older history rather than
 * scattered nights), which it holds already, and which of its own snapshots the source no longer has.
 */
export interface SyncScope {
  /** The tenants the source token reads: every one, or one. */
  sourceTenant: 'all' | string;
  /** Where the copies go: each into its source tenant (a global destination admin), or all into one. */
  destinationTenant: 'all' | string;
}

export interface SyncPlan {
  copy: SnapshotInfo[];
  present: SnapshotInfo[];
  /** Destination snapshots of the synced scope the source no longer lists (forgotten there). */
  vanished: SnapshotInfo[];
}

export function byTimeThenId(a: SnapshotInfo, b: SnapshotInfo): number {
  return Date.parse(a.time) - Date.parse(b.time) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

/** The destination tenant a source snapshot is copied into; undefined: the destination token's own. */
export function targetTenant(scope: SyncScope, s: SnapshotInfo): string | undefined {
  return scope.destinationTenant === 'all' ? s.tenant : undefined;
}

export function planSync(source: SnapshotInfo[], destination: SnapshotInfo[], scope: SyncScope): SyncPlan {
  const held = new Set(destination.map((s) => s.id));
  const listed = new Set(source.map((s) => s.id));
  const sorted = [...source].sort(byTimeThenId);
  // A destination snapshot belongs to the synced scope when a copy could have put it there: with a global
  // destination admin and a one-tenant source, only that tenant's snapshots (others' are none of ours).
  const inScope = (s: SnapshotInfo) =>
    scope.destinationTenant !== 'all' || scope.sourceTenant === 'all' || s.tenant === scope.sourceTenant;
  return {
    copy: sorted.filter((s) => !held.has(s.id)),
    present: sorted.filter((s) => held.has(s.id)),
    vanished: destination.filter((s) => inScope(s) && !listed.has(s.id)).sort(byTimeThenId),
  };
}
