import type { DiskSeries } from '../repo-engine/types.js';
import type { DiskSeriesStats } from './protocol.js';

/** A disk's series as GET /v1/stats and /metrics report it: the newest snapshot reduced to what is watched. */
export function describeDiskSeries(series: DiskSeries): DiskSeriesStats {
  const { tenant, host, disk, snapshots, newest } = series;
  return {
    tenant,
    host,
    disk,
    snapshots,
    newest: {
      id: newest.id,
      time: newest.time,
      size: newest.size,
      // Sectors the disk could not give at its last backup: the early sign of a failing disk.
      unreadableBytes: newest.unreadable.reduce((n, [, length]) => n + length, 0),
    },
  };
}
