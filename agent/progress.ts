import cliProgress from 'cli-progress';
import { formatBytes } from '../common/units.js';

/**
 * How a long transfer (backup or restore) shows itself to people and to scripts: a progress bar on a
 * terminal, one JSON object per line with --json (throttled, for log shippers and wrappers), or nothing when
 * stderr is neither (cron mail stays short). The caller passes plain counters; this module only renders.
 */
export interface ProgressSample {
  /** Bytes processed so far, of `total` (null when unknown, for a pipe). */
  done: number;
  total: number | null;
  /** Extra counters shown in the bar and JSON, e.g. new vs known bytes. */
  [key: string]: number | string | null;
}

export interface ProgressReporterOptions {
  json: boolean;
  /** Where lines and the bar go: stderr by default (stdout may be the data or the summary). */
  stream?: NodeJS.WriteStream;
  /** JSON lines at most this often. Default 500 ms. */
  intervalMs?: number;
  /** What the bar calls the second figure, e.g. 'new'. */
  label?: string;
  /** A short description of the extra figures for the bar, from the sample. */
  describe?: (s: ProgressSample) => string;
}

export interface ProgressReporter {
  update(sample: ProgressSample): void;
  /** Stops the bar / writes a last progress line, before the summary is printed. */
  finish(): void;
}

export function createProgressReporter(opts: ProgressReporterOptions): ProgressReporter {
  const stream = opts.stream ?? process.stderr;
  const started = performance.now();
  const rate = (done: number) => {
    const s = (performance.now() - started) / 1000;
    return s > 0 ? done / s : 0;
  };
  if (opts.json) return jsonReporter(stream, opts.intervalMs ?? 500, rate);
  if (stream.isTTY) return barReporter(stream, rate, opts.describe);
  return { update() {}, finish() {} };
}

function jsonReporter(
  stream: NodeJS.WriteStream,
  intervalMs: number,
  rate: (d: number) => number,
): ProgressReporter {
  let last = 0;
  let latest: ProgressSample | null = null;
  const write = (s: ProgressSample) => {
    const line = { type: 'progress', ...s, bytesPerSecond: Math.round(rate(s.done)) };
    stream.write(`${JSON.stringify(line)}\n`);
  };
  return {
    update(s) {
      latest = s;
      const now = performance.now();
      if (now - last >= intervalMs) {
        last = now;
        write(s);
        latest = null;
      }
    },
    finish() {
      if (latest) write(latest);
    },
  };
}

function barReporter(
  stream: NodeJS.WriteStream,
  rate: (d: number) => number,
  describe?: (s: ProgressSample) => string,
): ProgressReporter {
  const bar = new cliProgress.SingleBar(
    {
      stream,
      format: ' {bar} {percentage}% | {doneText} of {totalText} | {speed}/s | ETA {eta_formatted} | {extra}',
      hideCursor: true,
      barsize: 30,
      etaBuffer: 50,
      fps: 5,
    },
    cliProgress.Presets.shades_classic,
  );
  let startedBar = false;
  return {
    update(s) {
      const payload = {
        doneText: formatBytes(s.done),
        totalText: s.total === null ? '?' : formatBytes(s.total),
        speed: formatBytes(rate(s.done)),
        extra: describe ? describe(s) : '',
      };
      if (!startedBar) {
        bar.start(s.total ?? Math.max(1, s.done), s.done, payload);
        startedBar = true;
      } else {
        if (s.total === null) bar.setTotal(Math.max(1, s.done));
        bar.update(s.done, payload);
      }
    },
    finish() {
      if (startedBar) bar.stop();
    },
  };
}
