import type { RepositoryApi } from '../repo-engine/types.js';
import { describeDiskSeries } from './disk-series.js';
import type { DiskSeriesStats } from './protocol.js';
import { DISKVAULT_VERSION } from './version.js';

/**
 * Counters for GET /metrics in the Prometheus text format (version 0.0.4). Request counts are labelled by
 * route pattern, never by URL, so the label set stays small.
 */
export class Metrics {
  private readonly requests = new Map<string, number>();
  private readonly durationSum = new Map<string, number>();
  bytesIn = 0;
  bytesOut = 0;
  chunksStored = 0;
  chunksDeduplicated = 0;
  /** Chunks sent over fetch streams (api/chunk-fetch-stream.ts), which the request counts do not see. */
  chunksFetchStreamed = 0;
  commits = 0;

  observe(
    method: string,
    route: string,
    status: number,
    ms: number,
    bytesIn: number,
    bytesOut: number,
  ): void {
    const key = `method="${method}",route="${escapeLabel(route)}",status="${status}"`;
    this.requests.set(key, (this.requests.get(key) ?? 0) + 1);
    const dkey = `method="${method}",route="${escapeLabel(route)}"`;
    this.durationSum.set(dkey, (this.durationSum.get(dkey) ?? 0) + ms / 1000);
    this.bytesIn += bytesIn;
    this.bytesOut += bytesOut;
  }

  render(repo: RepositoryApi, extra: { sessions: number; jobs: number }): string {
    const out: string[] = [];
    const metric = (name: string, type: string, help: string, lines: string[]) => {
      out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, ...lines);
    };
    metric('diskvault_build_info', 'gauge', 'The diskvault release and Node.js version serving (always 1).', [
      `diskvault_build_info{version="${escapeLabel(DISKVAULT_VERSION)}",node="${escapeLabel(process.version)}"} 1`,
    ]);
    metric(
      'diskvault_http_requests_total',
      'counter',
      'HTTP requests by route and status.',
      [...this.requests].map(([k, v]) => `diskvault_http_requests_total{${k}} ${v}`),
    );
    metric(
      'diskvault_http_request_seconds_sum',
      'counter',
      'Time spent answering requests.',
      [...this.durationSum].map(([k, v]) => `diskvault_http_request_seconds_sum{${k}} ${v.toFixed(6)}`),
    );
    metric('diskvault_http_received_bytes_total', 'counter', 'Request body bytes received.', [
      `diskvault_http_received_bytes_total ${this.bytesIn}`,
    ]);
    metric('diskvault_http_sent_bytes_total', 'counter', 'Response bytes sent.', [
      `diskvault_http_sent_bytes_total ${this.bytesOut}`,
    ]);
    metric('diskvault_chunks_stored_total', 'counter', 'Chunk uploads that stored new data.', [
      `diskvault_chunks_stored_total ${this.chunksStored}`,
    ]);
    metric('diskvault_chunks_deduplicated_total', 'counter', 'Chunk uploads of data already held.', [
      `diskvault_chunks_deduplicated_total ${this.chunksDeduplicated}`,
    ]);
    metric('diskvault_fetch_stream_chunks_total', 'counter', 'Chunks sent over fetch streams.', [
      `diskvault_fetch_stream_chunks_total ${this.chunksFetchStreamed}`,
    ]);
    metric('diskvault_commits_total', 'counter', 'Snapshots committed.', [
      `diskvault_commits_total ${this.commits}`,
    ]);
    metric('diskvault_open_sessions', 'gauge', 'Upload sessions bound to tokens.', [
      `diskvault_open_sessions ${extra.sessions}`,
    ]);
    metric('diskvault_running_jobs', 'gauge', 'Verify jobs running.', [
      `diskvault_running_jobs ${extra.jobs}`,
    ]);
    const buffers = repo.readBuffers();
    metric(
      'diskvault_chunk_read_buffers_held',
      'gauge',
      'Chunk read buffers held by the read cache or by responses still being sent.',
      [`diskvault_chunk_read_buffers_held ${buffers.held}`],
    );
    metric(
      'diskvault_chunk_read_buffers_reused_total',
      'counter',
      'Chunk reads that went into a reused buffer instead of a new one.',
      [`diskvault_chunk_read_buffers_reused_total ${buffers.reused}`],
    );
    const s = repo.stats();
    metric('diskvault_snapshots', 'gauge', 'Snapshots in the repository.', [
      `diskvault_snapshots ${s.snapshots}`,
    ]);
    metric('diskvault_unique_chunks', 'gauge', 'Distinct chunks stored.', [
      `diskvault_unique_chunks ${s.uniqueChunks}`,
    ]);
    metric('diskvault_logical_bytes', 'gauge', 'Sum of snapshot sizes.', [
      `diskvault_logical_bytes ${s.logicalBytes}`,
    ]);
    metric('diskvault_stored_bytes', 'gauge', 'Bytes of chunk objects in storage.', [
      `diskvault_stored_bytes ${s.storedBytes}`,
    ]);
    // Per disk, for alerts: a backup that stopped arriving, a disk that started losing sectors.
    const disks = repo.diskSeries().map(describeDiskSeries);
    const perDisk = (name: string, help: string, value: (d: DiskSeriesStats) => number) =>
      metric(
        name,
        'gauge',
        help,
        disks.map(
          (d) =>
            `${name}{tenant="${escapeLabel(d.tenant)}",host="${escapeLabel(d.host)}",disk="${escapeLabel(d.disk)}"} ${value(d)}`,
        ),
      );
    perDisk('diskvault_disk_snapshots', 'Snapshots of each disk.', (d) => d.snapshots);
    perDisk(
      'diskvault_disk_last_snapshot_timestamp_seconds',
      'Time the newest snapshot of each disk represents, in Unix seconds.',
      (d) => Date.parse(d.newest.time) / 1000,
    );
    perDisk(
      'diskvault_disk_last_snapshot_size_bytes',
      'Image size of the newest snapshot of each disk.',
      (d) => d.newest.size,
    );
    perDisk(
      'diskvault_disk_last_snapshot_unreadable_bytes',
      'Bytes the newest snapshot of each disk could not read (stored as zeros).',
      (d) => d.newest.unreadableBytes,
    );
    return `${out.join('\n')}\n`;
  }
}

function escapeLabel(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}
