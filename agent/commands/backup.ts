import { stat } from 'node:fs/promises';
import { EXIT_INTERRUPTED, EXIT_OK, EXIT_UNREADABLE, UsageError } from '../../common/cli.js';
import { nameProblem, TAG_PATTERN } from '../../common/names.js';
import { formatBytes, parseSize } from '../../common/units.js';
import { type BackupProgress, type BackupSummary, runBackup } from '../backup/backup.js';
import { parseCommandArgs, resolveClientConfig } from '../cli-support.js';
import { DiskvaultClient } from '../client.js';
import { commandKey } from '../e2e/key-store.js';
import { KEY_OPTIONS } from '../e2e/snapshot-key.js';
import { interruptOnSigint } from '../interrupt.js';
import { warnIfPlainHttp } from '../plain-http.js';
import { createProgressReporter } from '../progress.js';
import { mountsOfDevice } from '../sources/mounts.js';
import { openSource } from '../sources/open.js';

const HELP = `usage: diskvault backup SOURCE --host NAME --disk NAME [options]

SOURCE is a raw image file, a block device, a container image (qcow2, vhd, vmdk, vdi) or - for stdin.

options:
  --server URL           repository server (or DISKVAULT_SERVER, or the config file)
  --token T              API token (or DISKVAULT_TOKEN / DISKVAULT_TOKEN_FILE, or the config file)
  --config FILE          agent config file (default ~/.config/diskvault/agent.json)
  --cacert FILE          for https: trust this CA's (or the server's own) certificate (repeatable)
  --host NAME            the machine the disk belongs to
  --disk NAME            the disk's name on that machine
  --tag T                a tag for the snapshot (repeatable)
  --time ISO8601         the time the snapshot represents (default: now); an earlier time than the
                         backup's start is an import and needs an admin token
  --format F             raw, qcow2, vhd, vmdk, vdi (default: detect)
  --concurrency N        chunk uploads in flight (default 8)
  --compression-level N  zstd level for uploads, -5..19 (default 1)
  --limit-upload RATE    cap upload bandwidth: KiB/s as in restic (2048), or 500K, 20M, 1G
  --max-unreadable LIMIT unreadable bytes accepted as zeros before the backup stops and commits
                         nothing: a size (0, 64M) or a share of the image (default 1%, at most 1G)
  --key FILE             encrypt end to end with this key file (or DISKVAULT_KEY; 'diskvault key create')
  --password-file FILE   the key's passphrase (or DISKVAULT_PASSWORD, or a prompt on a terminal)
  --json                 progress as JSON lines on stderr, the summary as JSON on stdout

exit codes: 0 done, 1 failed, 2 usage error, 3 done but some ranges could not be read (stored as zeros)
`;

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseCommandArgs(argv, {
    tag: { type: 'string', multiple: true },
    time: { type: 'string' },
    format: { type: 'string' },
    concurrency: { type: 'string' },
    'compression-level': { type: 'string' },
    'max-unreadable': { type: 'string' },
    ...KEY_OPTIONS,
  });
  if (values.help) {
    process.stdout.write(HELP);
    return EXIT_OK;
  }
  if (positionals.length !== 1)
    throw new UsageError('give exactly one SOURCE (a file, a block device, or - for stdin)');
  const host = required(values.host, '--host');
  const disk = required(values.disk, '--disk');
  for (const [flag, name] of [
    ['--host', host],
    ['--disk', disk],
  ]) {
    const problem = nameProblem(flag, name);
    if (problem) throw new UsageError(problem);
  }
  const tags = values.tag ?? [];
  for (const t of tags) if (!TAG_PATTERN.test(t)) throw new UsageError(`--tag '${t}' is invalid`);
  let time: string | undefined;
  if (values.time !== undefined) {
    const ms = Date.parse(values.time);
    if (Number.isNaN(ms)) throw new UsageError(`--time '${values.time}' is not an ISO 8601 date`);
    time = new Date(ms).toISOString();
  }
  const concurrency = intFlag(values.concurrency, '--concurrency', 1, 256) ?? 8;
  const compressionLevel = intFlag(values['compression-level'], '--compression-level', -5, 19) ?? 1;
  const format = values.format;
  if (format !== undefined && !/^(raw|qcow2|vhd|vmdk|vdi)$/.test(format)) {
    throw new UsageError(`--format ${format}: expected raw, qcow2, vhd, vmdk or vdi`);
  }
  const cfg = resolveClientConfig(values);
  // Opened before anything is read or sent: a wrong passphrase stops the backup at once.
  const e2e = await commandKey(values);

  // Parsed before the source is opened, so a bad value is a usage error whatever the source.
  const unreadableLimit = parseUnreadableLimit(values['max-unreadable']);
  const source = await openSource(positionals[0], { format });
  const maxUnreadable = unreadableBudgetFor(unreadableLimit, source.size);
  const warnings = await sourceWarnings(positionals[0]);
  for (const w of warnings) {
    process.stderr.write(
      values.json === true
        ? `${JSON.stringify({ type: 'warning', ...w })}\n`
        : `diskvault backup: warning: ${w.message}\n`,
    );
  }
  warnIfPlainHttp(cfg.server, 'backup', values.json === true);
  const interrupt = interruptOnSigint();
  const client = new DiskvaultClient({ ...cfg, concurrency, signal: interrupt.signal });
  const reporter = createProgressReporter({
    json: values.json === true,
    describe: (s) => `new ${formatBytes(Number(s.newBytes))}, known ${formatBytes(Number(s.knownBytes))}`,
  });
  try {
    const summary = await runBackup({
      client,
      source,
      host,
      disk,
      tags,
      time,
      concurrency,
      compressionLevel,
      maxUnreadable,
      ...(e2e ? { e2e } : {}),
      signal: interrupt.signal,
      ...tuningFromEnv(),
      onProgress: (p: BackupProgress) =>
        reporter.update({
          done: p.bytesRead,
          total: p.total,
          phase: p.phase,
          chunks: p.chunks,
          newChunks: p.newChunks,
          newBytes: p.newBytes,
          knownBytes: p.knownBytes,
          bytesUploaded: p.bytesUploaded,
        }),
    });
    reporter.finish();
    printSummary(summary, warnings, values.json === true);
    return summary.unreadable.length > 0 ? EXIT_UNREADABLE : EXIT_OK;
  } catch (err) {
    if (!interrupt.signal.aborted) throw err;
    reporter.finish();
    process.stderr.write(
      'diskvault backup: interrupted: nothing was committed (the upload session was aborted)\n',
    );
    return EXIT_INTERRUPTED;
  } finally {
    interrupt.dispose();
    reporter.finish();
    client.close();
    await source.close().catch(() => {});
  }
}

interface Warning {
  code: 'MountedReadWrite';
  message: string;
}

/**
 * What the user should know before trusting the snapshot. A block device mounted read-write changes while
 * it is read, so its image is only as consistent as the disk after a power cut: worth saying, not refusing
 * (that is what many backups of a running machine are, and a journaling filesystem recovers from it).
 */
async function sourceWarnings(path: string): Promise<Warning[]> {
  if (path === '-') return [];
  const st = await stat(path);
  if (!st.isBlockDevice()) return [];
  const writable = (await mountsOfDevice(st.rdev)).filter((m) => !m.readOnly);
  if (writable.length === 0) return [];
  return [
    {
      code: 'MountedReadWrite',
      message: `${path} is mounted read-write at ${writable.map((m) => m.mountPoint).join(', ')}: writes during the backup leave an image only as consistent as after a power cut; for a consistent one, back up a snapshot of it (LVM, device-mapper) or remount it read-only`,
    },
  ];
}

function printSummary(s: BackupSummary, warnings: Warning[], json: boolean): void {
  if (json) {
    const out = {
      type: 'summary',
      snapshot: s.snapshot.id,
      host: s.snapshot.host,
      disk: s.snapshot.disk,
      time: s.snapshot.time,
      size: s.size,
      sha256: s.sha256,
      chunks: s.chunks,
      newChunks: s.newChunks,
      newBytes: s.newBytes,
      bytesUploaded: s.bytesUploaded,
      seconds: round(s.seconds, 3),
      throughput: Math.round(s.throughput),
      dedupRatio: round(s.dedupRatio, 4),
      unreadable: s.unreadable,
      sourceFormat: s.sourceFormat,
      warnings,
    };
    process.stdout.write(`${JSON.stringify(out)}\n`);
    return;
  }
  const lines = [
    `snapshot ${s.snapshot.id} saved (${s.snapshot.host}/${s.snapshot.disk}, ${s.snapshot.time})`,
    `  image     ${formatBytes(s.size)} (${s.sourceFormat}), sha256 ${s.sha256}`,
    `  chunks    ${s.chunks}, new ${s.newChunks} (${formatBytes(s.newBytes)} raw, ${formatBytes(s.bytesUploaded)} sent)`,
    `  dedup     ${(s.dedupRatio * 100).toFixed(1)}% of the image was already in the repository`,
    `  time      ${s.seconds.toFixed(1)} s, ${formatBytes(s.throughput)}/s`,
  ];
  for (const w of warnings) lines.push(`  WARNING   ${w.message}`);
  if (s.unreadable.length > 0) {
    const bytes = s.unreadable.reduce((n, r) => n + r[1], 0);
    lines.push(`  UNREADABLE ${formatBytes(bytes)} in ${s.unreadable.length} ranges, stored as zeros:`);
    for (const [off, len] of s.unreadable.slice(0, 20)) lines.push(`    offset ${off}, ${len} bytes`);
    if (s.unreadable.length > 20) lines.push(`    ... and ${s.unreadable.length - 20} more (see --json)`);
  }
  process.stdout.write(`${lines.join('\n')}\n`);
}

function required(v: string | undefined, flag: string): string {
  if (v === undefined || v === '') throw new UsageError(`${flag} is required`);
  return v;
}

/** What --max-unreadable said (absent: the default), and the text it is named by in the message. */
type UnreadableLimit = ({ share: number } | { bytes: number }) & { text: string; isDefault: boolean };

/** --max-unreadable: a share of the image ('1%', '0.5%', '100%' for no limit) or a size ('0', '64M'). */
function parseUnreadableLimit(flag: string | undefined): UnreadableLimit {
  const text = flag ?? '1%';
  const isDefault = flag === undefined;
  const percent = /^(\d+(?:\.\d+)?)%$/.exec(text.trim());
  if (percent) {
    const share = Number(percent[1]) / 100;
    if (share > 1) throw new UsageError(`--max-unreadable ${text}: a share is at most 100%`);
    return { share, text, isDefault };
  }
  try {
    return { bytes: parseSize(text), text, isDefault };
  } catch {
    throw new UsageError(
      `--max-unreadable '${text}': expected a share of the image (1%) or a size (0, 64M, 1G)`,
    );
  }
}

/** The default, 1%, is capped at 1 GiB: past that a disk needs ddrescue, and narrowing more costs hours. */
const DEFAULT_UNREADABLE_CAP = 1024 ** 3;

function unreadableBudgetFor(
  limit: UnreadableLimit,
  size: number | null,
): { bytes: number; asGiven: string } {
  if ('bytes' in limit) return { bytes: limit.bytes, asGiven: limit.text };
  // A pipe's size is unknown, but a pipe cannot be read twice either: its first read error ends the backup.
  const bytes = Math.floor(limit.share * (size ?? Number.POSITIVE_INFINITY));
  if (limit.isDefault && bytes > DEFAULT_UNREADABLE_CAP)
    return { bytes: DEFAULT_UNREADABLE_CAP, asGiven: '1 GiB' };
  return { bytes, asGiven: limit.text };
}

function intFlag(v: string | undefined, flag: string, min: number, max: number): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max)
    throw new UsageError(`${flag} must be an integer from ${min} to ${max}`);
  return n;
}

/**
 * Benchmark knobs, deliberately not flags: DISKVAULT_WINDOW_MIB (bytes read per window), DISKVAULT_WINDOWS
 * (windows in flight) and DISKVAULT_WORKERS (threads). Memory is about windows x (window + 4 MiB).
 */
function tuningFromEnv(): { windowBytes?: number; windowsInFlight?: number; workers?: number } {
  const num = (name: string) => {
    const v = process.env[name];
    if (v === undefined || v === '') return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1 || n > 1024)
      throw new UsageError(`${name} must be an integer from 1 to 1024`);
    return n;
  };
  const mib = num('DISKVAULT_WINDOW_MIB');
  const windows = num('DISKVAULT_WINDOWS');
  const workers = num('DISKVAULT_WORKERS');
  return {
    ...(mib ? { windowBytes: mib * 1024 * 1024 } : {}),
    ...(windows ? { windowsInFlight: windows } : {}),
    ...(workers ? { workers } : {}),
  };
}

function round(n: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}
