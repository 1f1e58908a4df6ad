import { readFileSync } from 'node:fs';
import type { SnapshotInfo } from '../../api/protocol.js';
import { EXIT_FAILURE, EXIT_OK, parseCommandLine, UsageError } from '../../common/cli.js';
import { DiskvaultError, isDiskvaultError } from '../../common/errors.js';
import { formatBytes } from '../../common/units.js';
import { isProtectedRefusal } from '../../repo-engine/protection.js';
import { CLIENT_OPTIONS, resolveClientConfig, trustedCertificates } from '../cli-support.js';
import { DiskvaultClient } from '../client.js';
import { warnIfPlainHttp } from '../plain-http.js';
import { createProgressReporter } from '../progress.js';
import { ChunkCopier } from '../sync/chunk-copier.js';
import { copySnapshot } from '../sync/copy-snapshot.js';
import { planSync, type SyncScope, targetTenant } from '../sync/plan.js';

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

Exit status: 0 when every snapshot was copied (or was there already), 1 when any failed.
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
  const source = new DiskvaultClient({
    server: values.from,
    token: fromToken,
    ca: sourceCertificates(values['from-cacert']),
    limitDownload: cfg.limitDownload,
    concurrency: transfers,
  });
  const destination = new DiskvaultClient({ ...cfg, limitDownload: null, concurrency: transfers });
  try {
    return await sync(source, destination, {
      from: values.from.replace(/\/+$/, ''),
      host: values.host,
      disk: values.disk,
      removeVanished: values['remove-vanished'] === true,
      transfers,
      json,
    });
  } finally {
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

async function sync(
  source: DiskvaultClient,
  destination: DiskvaultClient,
  opts: {
    from: string;
    host?: string;
    disk?: string;
    removeVanished: boolean;
    transfers: number;
    json: boolean;
  },
): Promise<number> {
  const started = performance.now();
  const scope = await scopes(source, destination);
  const filter = { host: opts.host, disk: opts.disk };
  const [fromList, toList] = await Promise.all([
    source.listSnapshots(filter),
    destination.listSnapshots(filter),
  ]);
  const plan = planSync(fromList, toList, scope);
  const summary: Summary = {
    type: 'summary',
    source: opts.from,
    snapshotsCopied: 0,
    snapshotsPresent: plan.present.length,
    snapshotsFailed: 0,
    snapshotsVanished: plan.vanished.length,
    snapshotsRemoved: 0,
    chunksCopied: 0,
    chunksPresent: 0,
    bytesCopied: 0,
    rawBytesCopied: 0,
    seconds: 0,
    failures: [],
  };
  const say = (human: string, event: Record<string, unknown>) => {
    if (opts.json) process.stdout.write(`${JSON.stringify(event)}\n`);
    else process.stdout.write(`${human}\n`);
  };
  const total = plan.copy.reduce((n, s) => n + s.size, 0);
  const reporter = createProgressReporter({
    json: opts.json,
    describe: (s) =>
      `snapshot ${s.snapshot}/${s.snapshots}, ${s.chunksCopied} chunks copied (${formatBytes(Number(s.bytesCopied))} sent)`,
  });
  const copier = new ChunkCopier(source, destination, opts.transfers);
  let doneBefore = 0;
  try {
    for (const [i, snap] of plan.copy.entries()) {
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
    reporter.finish();
  }

  for (const snap of opts.removeVanished ? plan.vanished : []) {
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

  summary.seconds = Math.round(performance.now() - started) / 1000;
  if (opts.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
  else {
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
