import { formatRange } from './ranges.js';
import type { RestoreResult } from './restore.js';

/** The final report of a restore, as one JSON object (--json) or a few lines for a person. */
export interface RestoreSummary extends RestoreResult {
  type: 'summary';
  target: string;
  /** Bytes of image per second. */
  throughput: number;
  /** A whole-disk device whose partition table the kernel read again: the partitions it shows now. */
  partitions?: string[];
}

export function summarize(res: RestoreResult, target: string, partitions?: string[]): RestoreSummary {
  return {
    type: 'summary',
    ...res,
    target,
    seconds: Math.round(res.seconds * 1000) / 1000,
    throughput: res.seconds > 0 ? Math.round(res.size / res.seconds) : res.size,
    ...(partitions ? { partitions } : {}),
  };
}

const MiB = 1024 * 1024;

export function formatSummary(s: RestoreSummary, verifyRequested: boolean): string {
  const lines = [
    `restored snapshot ${s.snapshot} to ${s.target}: ${mib(s.size)} in ${s.seconds.toFixed(2)} s (${(s.throughput / MiB).toFixed(0)} MiB/s)`,
    `  fetched ${mib(s.bytesFetched)} (${s.chunksFetched} chunks), reused ${mib(s.bytesReused)} (${s.chunksReused} chunks), zero chunks ${s.zeroChunks}, written ${mib(s.bytesWritten)}`,
  ];
  if (!verifyRequested) lines.push(`  image sha256 not checked (--no-verify); expected ${s.expectedSha256}`);
  else if (s.verified) lines.push(`  image sha256 ${s.sha256} (matches the snapshot)`);
  else if (s.damaged.length === 0)
    lines.push(`  IMAGE HASH MISMATCH: restored ${s.sha256}, snapshot says ${s.expectedSha256}`);
  else lines.push(`  image sha256 ${s.sha256} (does not match ${s.expectedSha256}: damaged ranges are zero)`);
  if (s.unreadable.length > 0) {
    lines.push(
      `  ${s.unreadable.length} range(s) were unreadable at backup time and are zeros: ${s.unreadable.map(formatRange).join(', ')}`,
    );
  }
  if (s.partitions) {
    lines.push(
      `  partition table re-read: ${s.partitions.length > 0 ? s.partitions.join(', ') : 'the kernel shows no partitions'}`,
    );
  }
  if (s.damaged.length > 0) {
    lines.push(
      `  RESTORE INCOMPLETE: ${s.damaged.length} damaged range(s) left as zeros [offset, length]: ${s.damaged.map(formatRange).join(', ')}`,
    );
  }
  return `${lines.join('\n')}\n`;
}

function mib(n: number): string {
  return `${(n / MiB).toFixed(1)} MiB`;
}
