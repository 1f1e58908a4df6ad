import cliProgress from 'cli-progress';
import type { RestoreProgress } from './restore.js';

/**
 * Shows a restore's progress: a bar on a TTY, throttled JSON lines with --json, nothing otherwise. It writes
 * to the stream it is given, which is stderr whenever the image itself goes to stdout.
 */
export interface ProgressReporter {
  update(p: RestoreProgress): void;
  stop(): void;
}

export function createRestoreProgress(opts: {
  json: boolean;
  out: NodeJS.WriteStream;
  snapshot: string;
  size: number;
}): ProgressReporter {
  if (opts.json) return new JsonProgress(opts.out, opts.snapshot);
  if (opts.out.isTTY) return new BarProgress(opts.out, opts.size);
  return { update() {}, stop() {} };
}

const MiB = 1024 * 1024;

class BarProgress implements ProgressReporter {
  private readonly bar: cliProgress.SingleBar;
  private readonly started = performance.now();
  private last = 0;
  constructor(out: NodeJS.WriteStream, size: number) {
    this.bar = new cliProgress.SingleBar(
      {
        stream: out,
        hideCursor: true,
        etaBuffer: 50,
        format:
          'restore [{bar}] {percentage}% | {doneMiB}/{totalMiB} MiB | {rate} MiB/s | fetched {fetchedMiB} MiB, reused {reusedMiB} MiB | ETA {eta_formatted}',
      },
      cliProgress.Presets.shades_classic,
    );
    this.bar.start(size, 0, {
      doneMiB: '0',
      totalMiB: (size / MiB).toFixed(0),
      rate: '0',
      fetchedMiB: '0',
      reusedMiB: '0',
    });
  }
  update(p: RestoreProgress): void {
    const now = performance.now();
    if (now - this.last < 100 && p.done < p.total) return;
    this.last = now;
    const secs = Math.max(0.001, (now - this.started) / 1000);
    this.bar.update(p.done, {
      doneMiB: (p.done / MiB).toFixed(0),
      rate: (p.done / MiB / secs).toFixed(0),
      fetchedMiB: (p.bytesFetched / MiB).toFixed(0),
      reusedMiB: (p.bytesReused / MiB).toFixed(0),
    });
  }
  stop(): void {
    this.bar.stop();
  }
}

class JsonProgress implements ProgressReporter {
  private last = 0;
  private readonly started = performance.now();
  constructor(
    private readonly out: NodeJS.WriteStream,
    private readonly snapshot: string,
  ) {}
  update(p: RestoreProgress): void {
    const now = performance.now();
    // One line every half second is enough for a GUI and cheap enough for a log file.
    if (now - this.last < 500) return;
    this.last = now;
    const seconds = (now - this.started) / 1000;
    this.out.write(
      `${JSON.stringify({ type: 'progress', snapshot: this.snapshot, ...p, seconds: round(seconds) })}\n`,
    );
  }
  stop(): void {}
}

function round(n: number): number {
  return Math.round(n * 1000) / 1000;
}
