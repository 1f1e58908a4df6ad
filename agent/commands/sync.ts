import { readFileSync } from 'node:fs';
import type { SnapshotInfo } from '../../api/protocol.js';
import { EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, parseCommandLine, UsageError } from '../../common/cli.js';
import { DiskvaultError, isDiskvaultError } from '../../common/errors.js';
import { formatBytes } from '../../common/units.js';
import { isProtectedRefusal } from '../../repo-engine/protection.js';
import { CLIENT_OPTIONS, resolveClientConfig, trustedCertificates } from '../cli-support.js';
import { DiskvaultClient } from '../client.js';
import { interruptOnSigint } from '../interrupt.js';
import { warnIfPlainHttp } from '../plain-http.js';
import { createProgressReporter } from '../progress.js';
import { ChunkCopier } from '../sync/chunk-copier.js';
import { copySnapshot } from '../sync/copy-snapshot.js';
import { planSync, type SyncPlan, type SyncScope, targetTenant } from '../sync/plan.js';

const USAGE = `usage: diskvault sync --from URL (--from-token T | --from-token-file FILE) [--host H] [--disk D]
                      [--remove-vanished] [--transfers N] [--from-cacert FILE] [--json]

Pulls snapshots from another diskvault server (the source, --from) into this one (the destination:
--server / DISKVAULT_SERVER with an admin token, --token / DISKVAULT_TOKEN). Every source snapshot the
destination lacks is copied, oldest first, with only the chunks the destination lacks; each chunk is checked
against its id on arrival, and a snapshot is committed, with its id, time, host, disk, tags and image hash,
only once all its chunks are stored. Killed at any point and run again, it finishes and copies nothing twice.

  --from URL             the source server
  --from-token T         a token of the source (a reader token: it can change nothing there);
                         also DISKVAULT_FROM_TOKEN, or --from-token-file FILE / DISKVAULT_FROM_TOKEN_FILE
  --from-cacert FILE     certificates to trust for the source (as --cacert does for the destination);
                         also DISKVAULT_FROM_CACERT
  --host H, --disk D     only snapshots of this host / disk
  --remove-vanished      delete destination snapshots the source no longer has (protected ones are kept);
                         without it, snapshots forgotten on the source stay on the destination
  --transfers N          chunks in flight at once (default 8)
  --limit-download RATE  bandwidth from the source; --limit-upload RATE: to the destination
  --json                 progress as JSON lines on stderr; a line per snapshot and the summary on stdout

Ctrl-C stops it cleanly: no further chunk or snapshot is started, the transfers in flight are cancelled, the
snapshot being copied is not committed (its chunks already stored stay, so the next run does not copy them
again), and one line says how many snapshots were copied (with --json, the summary too, "interrupted":true).
A second Ctrl-C exits at once. Run sync again to finish.

Exit status: 0 when every snapshot was copied (or was there already), 1 when any failed, 130 when
interrupted by Ctrl-C.
`;

const OPTIONS = {
  ...CLIENT_OPTIONS,
  from: { type: 'string' },
  'from-token': { type: 'string' },
  'from-token-file': { type: 'string' },
  'from-cacert': { type: 'string', multiple: true },
  'remove-vanished': { type: 'boolean' },
  transfers: { type: 'string' },
} as const;

interface Summary {
  type: 'summary';
  source: string;
  snapshotsCopied: number;
  snapshotsPresent: number;
  snapshotsFailed: number;
  /** Destination snapshots the source no longer lists. */
  snapshotsVanished: number;
  snapshotsRemoved: number;
  chunksCopied: number;
  chunksPresent: number;
  bytesCopied: number;
  rawBytesCopied: number;
  seconds: number;
  failures: { snapshot: string; code: string; message: string }[];
  /** Ended by Ctrl-C: snapshots after the last one counted were not copied (run sync again). */
  interrupted: boolean;
}

/** Errors that end the whole run: asking again for the next snapshot would meet them too. */
const FATAL = new Set([
  'Unauthorized',
  'Forbidden',
  'StorageFull',
  'Unavailable',
  'InvalidInput',
  'TooLarge',
]);

export async function run(argv: string[], _command: string): Promise<number> {
  const { values, positionals } = parseCommandLine(argv, OPTIONS);
  if (positionals.length) throw new UsageError(`unexpected argument ${positionals[0]}`);
  if (values.help) {
    process.stdout.write(USAGE);
    return EXIT_OK;
  }
  if (!values.from) throw new UsageError('--from URL (the source server) is required');
  try {
    new URL(values.from);
  } catch {
    throw new UsageError(`--from ${values.from} is not a URL (http://host:8420)`);
  }
  const fromToken = sourceToken(values);
  const transfers = values.transfers === undefined ? 8 : Number(values.transfers);
  if (!Number.isSafeInteger(transfers) || transfers < 1 || transfers > 64)
    throw new UsageError('--transfers needs a whole number from 1 to 64');
  const cfg = resolveClientConfig(values);
  const json = values.json === true;
  // Both ends get a token: the source a reader's, the destination an admin's.
  warnIfPlainHttp(values.from, 'sync', json);
  warnIfPlainHttp(cfg.server, 'sync', json);
  const ca = sourceCertificates(values['from-cacert']);
  // Ctrl-C cancels every request in flight on both sides; aborting a session is clean-up and still goes.
  const interrupt = interruptOnSigint();
  const source = new DiskvaultClient({
    server: values.from,
    token: fromToken,
    ca,
    limitDownload: cfg.limitDownload,
    concurrency: transfers,
    signal: interrupt.signal,
  });
  const destination = new DiskvaultClient({
    ...cfg,
    limitDownload: null,
    concurrency: transfers,
    signal: interrupt.signal,
  });
  try {
    return await sync(source, destination, {
      from: values.from.replace(/\/+$/, ''),
      host: values.host,
      disk: values.disk,
      removeVanished: values['remove-vanished'] === true,
      transfers,
      json,
      signal: interrupt.signal,
    });
  } finally {
    interrupt.dispose();
    source.close();
    destination.close();
  }
}

function sourceToken(values: ReturnType<typeof parseCommandLine<typeof OPTIONS>>['values']): string {
  if (values['from-token']) return values['from-token'];
  if (process.env.DISKVAULT_FROM_TOKEN) return process.env.DISKVAULT_FROM_TOKEN;
  const file = values['from-token-file'] ?? process.env.DISKVAULT_FROM_TOKEN_FILE;
  if (!file) throw new UsageError('no source token: give --from-token T or --from-token-file FILE');
  try {
    return readFileSync(file, 'utf8').trim();
  } catch (err) {
    throw new UsageError(`cannot read the source token file ${file}: ${(err as Error).message}`);
  }
}

/** --from-cacert, else DISKVAULT_FROM_CACERT; never the destination's DISKVAULT_CACERT. */
function sourceCertificates(flags: string[] | undefined): Buffer[] {
  const files = flags?.length
    ? flags
    : process.env.DISKVAULT_FROM_CACERT
      ? [process.env.DISKVAULT_FROM_CACERT]
      : [];
  return files.length > 0 ? trustedCertificates(files, undefined, 'the command line') : [];
}

/** Which tenants each side's token covers, from its own statistics answer. */
async function scopes(source: DiskvaultClient, destination: DiskvaultClient): Promise<SyncScope> {
  const [src, dst] = await Promise.all([source.stats(), destination.stats()]);
  if (dst.scope === 'hosts')
    throw new DiskvaultError(
      'Forbidden',
      'the destination token must be an admin token (sync commits there)',
    );
  if (src.scope === 'hosts')
    throw new DiskvaultError(
      'Forbidden',
      'the source token is an agent token: give a reader token of the source (diskvault token create --role reader)',
    );
  return {
    sourceTenant: src.scope === 'repository' ? 'all' : (src.tenant?.tenant ?? 'all'),
    destinationTenant: dst.scope === 'repository' ? 'all' : (dst.tenant?.tenant ?? 'all'),
  };
}

interface SyncOptions {
  from: string;
  host?: string;
  disk?: string;
  removeVanished: boolean;
  transfers: number;
  json: boolean;
  /** Fired by Ctrl-C: the run stops starting work, and whatever was in flight fails with its reason. */
  signal: AbortSignal;
}

/** A line per snapshot: for people, or (--json) a JSON event, on stdout. */
type Say = (human: string, event: Record<string, unknown>) => void;

async function sync(
  source: DiskvaultClient,
  destination: DiskvaultClient,
  opts: SyncOptions,
): Promise<number> {
  const started = performance.now();
  const summary: Summary = {
    type: 'summary',
    source: opts.from,
    snapshotsCopied: 0,
    snapshotsPresent: 0,
    snapshotsFailed: 0,
    snapshotsVanished: 0,
    snapshotsRemoved: 0,
    chunksCopied: 0,
    chunksPresent: 0,
    bytesCopied: 0,
    rawBytesCopied: 0,
    seconds: 0,
    failures: [],
    interrupted: false,
  };
  const say: Say = (human, event) => {
    if (opts.json) process.stdout.write(`${JSON.stringify(event)}\n`);
    else process.stdout.write(`${human}\n`);
  };
  // How many snapshots the run set out to copy: unknown until both sides are listed.
  let toCopy: number | undefined;
  try {
    const scope = await scopes(source, destination);
    const filter = { host: opts.host, disk: opts.disk };
    const [fromList, toList] = await Promise.all([
      source.listSnapshots(filter),
      destination.listSnapshots(filter),
    ]);
    const plan = planSync(fromList, toList, scope);
    toCopy = plan.copy.length;
    summary.snapshotsPresent = plan.present.length;
    summary.snapshotsVanished = plan.vanished.length;
    await copySnapshots(source, destination, plan, scope, opts, summary, say);
    if (opts.removeVanished) await removeVanished(destination, plan, opts.signal, summary, say);
  } catch (err) {
    // Once Ctrl-C has fired, whatever a cancelled request threw is the interruption, not a failure.
    if (!opts.signal.aborted) throw err;
    summary.interrupted = true;
  }

  summary.seconds = Math.round(performance.now() - started) / 1000;
  if (opts.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
  if (summary.interrupted) {
    process.stderr.write(`diskvault sync: ${interruptedLine(summary, toCopy)}\n`);
    return EXIT_INTERRUPTED;
  }
  if (!opts.json) {
    const vanished =
      summary.snapshotsVanished > 0
        ? opts.removeVanished
          ? `, ${summary.snapshotsRemoved} vanished from the source and removed`
          : `, ${summary.snapshotsVanished} vanished from the source and kept`
        : '';
    process.stdout.write(
      `sync from ${opts.from}: ${summary.snapshotsCopied} snapshots copied, ${summary.snapshotsPresent} already present${vanished}${summary.snapshotsFailed ? `, ${summary.snapshotsFailed} FAILED` : ''}\n` +
        `  chunks    ${summary.chunksCopied} copied (${formatBytes(summary.rawBytesCopied)} raw, ${formatBytes(summary.bytesCopied)} sent), ${summary.chunksPresent} already present\n` +
        `  time      ${summary.seconds.toFixed(1)} s\n`,
    );
  }
  return summary.snapshotsFailed > 0 ? EXIT_FAILURE : EXIT_OK;
}

/** The one line Ctrl-C leaves: how far the run got, and that running it again finishes the job. */
function interruptedLine(summary: Summary, toCopy: number | undefined): string {
  if (toCopy === undefined)
    return 'interrupted: no snapshot copied (still listing them); run sync again to finish';
  const failed = summary.snapshotsFailed > 0 ? `, ${summary.snapshotsFailed} failed` : '';
  return `interrupted: ${summary.snapshotsCopied} of ${toCopy} snapshots copied${failed}; run sync again to finish`;
}

/**
 * Copies the plan's snapshots in order, counting each into `summary`. A snapshot whose chunks are damaged or
 * gone fails alone; errors every snapshot would meet, and Ctrl-C, end the run (thrown). No snapshot is
 * started once the signal has fired, and the one in flight is not committed (copySnapshot aborts its session).
 */
async function copySnapshots(
  source: DiskvaultClient,
  destination: DiskvaultClient,
  plan: SyncPlan,
  scope: SyncScope,
  opts: SyncOptions,
  summary: Summary,
  say: Say,
): Promise<void> {
  const total = plan.copy.reduce((n, s) => n + s.size, 0);
  const reporter = createProgressReporter({
    json: opts.json,
    describe: (s) =>
      `snapshot ${s.snapshot}/${s.snapshots}, ${s.chunksCopied} chunks copied (${formatBytes(Number(s.bytesCopied))} sent)`,
  });
  const copier = new ChunkCopier(source, destination, opts.transfers, opts.signal);
  let doneBefore = 0;
  try {
    for (const [i, snap] of plan.copy.entries()) {
      opts.signal.throwIfAborted();
      const report = (p: { doneBytes: number; chunksCopied: number; bytesCopied: number }) =>
        reporter.update({
          done: doneBefore + p.doneBytes,
          total,
          snapshot: i + 1,
          snapshots: plan.copy.length,
          chunksCopied: summary.chunksCopied + p.chunksCopied,
          bytesCopied: summary.bytesCopied + p.bytesCopied,
        });
      try {
        const r = await copySnapshot({
          source,
          destination,
          copier,
          snapshot: snap,
          tenant: targetTenant(scope, snap),
          onProgress: report,
        });
        summary.chunksCopied += r.chunksCopied;
        summary.chunksPresent += r.chunksPresent;
        summary.bytesCopied += r.bytesCopied;
        summary.rawBytesCopied += r.rawBytesCopied;
        if (r.outcome === 'copied') summary.snapshotsCopied++;
        else summary.snapshotsPresent++;
        say(
          `${r.outcome === 'copied' ? 'copied ' : 'present'} ${snap.id.slice(0, 12)}  ${snap.host} ${snap.disk}  ${snap.time}  ${r.chunksCopied} of ${r.chunks} chunks copied, ${formatBytes(r.bytesCopied)} sent`,
          { type: 'snapshot', action: r.outcome, ...describe(snap), ...r },
        );
      } catch (err) {
        if (opts.signal.aborted) throw err;
        const code = isDiskvaultError(err) ? err.code : 'Internal';
        if (code === 'NotFound' && !(await stillOnSource(source, snap.id))) {
          // Forgotten on the source since it was listed: nothing to copy, and nothing was committed.
          say(`gone    ${snap.id.slice(0, 12)}  forgotten on the source meanwhile`, {
            type: 'snapshot',
            action: 'gone',
            ...describe(snap),
          });
          continue;
        }
        if (FATAL.has(code) || !isDiskvaultError(err)) throw err;
        summary.snapshotsFailed++;
        const message = (err as Error).message;
        summary.failures.push({ snapshot: snap.id, code, message });
        say(`FAILED  ${snap.id.slice(0, 12)}  ${snap.host} ${snap.disk}  ${snap.time}: ${message}`, {
          type: 'snapshot',
          action: 'failed',
          ...describe(snap),
          code,
          message,
        });
      } finally {
        doneBefore += snap.size;
      }
    }
  } finally {
    copier.close();
    reporter.finish();
  }
}

/** --remove-vanished: forgets the destination's snapshots the source no longer lists, except protected ones. */
async function removeVanished(
  destination: DiskvaultClient,
  plan: SyncPlan,
  signal: AbortSignal,
  summary: Summary,
  say: Say,
): Promise<void> {
  for (const snap of plan.vanished) {
    signal.throwIfAborted();
    try {
      await destination.deleteSnapshot(snap.id);
      summary.snapshotsRemoved++;
      say(
        `removed ${snap.id.slice(0, 12)}  ${snap.host} ${snap.disk}  ${snap.time}  (vanished from the source)`,
        {
          type: 'snapshot',
          action: 'removed',
          ...describe(snap),
        },
      );
    } catch (err) {
      if (isDiskvaultError(err) && err.code === 'NotFound') continue;
      if (!isProtectedRefusal(err)) throw err;
      say(`kept    ${snap.id.slice(0, 12)}  ${snap.host} ${snap.disk}  ${snap.time}  protected`, {
        type: 'snapshot',
        action: 'kept',
        reason: 'protected',
        ...describe(snap),
      });
    }
  }
}

/**
 * NotFound may be the source's (the snapshot, or a chunk of it, forgotten and collected meanwhile) or the
 * destination's (an upload session that expired while the source stalled): only the first means "gone".
 */
async function stillOnSource(source: DiskvaultClient, id: string): Promise<boolean> {
  try {
    await source.getSnapshot(id);
    return true;
  } catch (err) {
    if (isDiskvaultError(err) && err.code === 'NotFound') return false;
    throw err;
  }
}

function describe(s: SnapshotInfo) {
  return { id: s.id, host: s.host, disk: s.disk, time: s.time, tenant: s.tenant };
}
