import { EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_UNREADABLE, UsageError } from '../../common/cli.js';
import { isDiskvaultError } from '../../common/errors.js';
import { ManifestReader } from '../../repo-engine/manifest-codec.js';
import { type ChunkHold, holdSnapshot } from '../chunk-hold.js';
import { parseCommandArgs, resolveClientConfig } from '../cli-support.js';
import { DiskvaultClient } from '../client.js';
import { describeVerdict, type FoundDamage, reportDamage, verdictClause } from '../damage-report.js';
import {
  KEY_OPTIONS,
  keyForSnapshot,
  openedHeader,
  passphraseGiven,
  workerKeys,
} from '../e2e/snapshot-key.js';
import { interruptOnSigint } from '../interrupt.js';
import { warnIfPlainHttp } from '../plain-http.js';
import { fetcherFor } from '../restore/fetcher-for.js';
import { rereadPartitionTable } from '../restore/partition-table.js';
import { createRestoreProgress } from '../restore/progress.js';
import { openQcow2Target } from '../restore/qcow2-target.js';
import { formatRange } from '../restore/ranges.js';
import { restoreSnapshot } from '../restore/restore.js';
import { openRestoreTarget } from '../restore/restore-target.js';
import { selectSnapshot } from '../restore/snapshot-selector.js';
import { formatSummary, summarize } from '../restore/summary.js';

const USAGE = `usage: diskvault restore SNAPSHOT TARGET [options]

SNAPSHOT  a snapshot id, an id prefix, or 'latest' (with --host and --disk)
TARGET    a file (created or overwritten), a block device, or '-' for stdout

options:
  --server URL, --token T, --config FILE   where the repository is (also DISKVAULT_SERVER / DISKVAULT_TOKEN)
  --cacert FILE                            for https: trust this CA's (or the server's own) certificate
  --host NAME, --disk NAME                 narrow 'latest' or an id prefix
  --sparse | --no-sparse                   leave zero chunks as holes in a file (default: sparse)
  --in-place                               TARGET holds a similar disk: rewrite only the chunks that differ
  --no-verify                              skip the whole-image SHA-256 check (chunks are always checked)
  --continue-on-error                      leave damaged chunks as zeros and go on (still exits 1)
  --format raw|qcow2                       write the disk raw (default) or as a sparse qcow2 v3 image
  --fsync                                  flush a file target to disk before reporting success
  --concurrency N                          chunk downloads in flight (default 12)
  --limit-download RATE                    cap download bandwidth: KiB/s as in restic, or 500K, 20M, 1G
  --key FILE                               the key file of an end-to-end snapshot (or DISKVAULT_KEY)
  --password-file FILE                     its passphrase (or DISKVAULT_PASSWORD, or a prompt on a terminal)
  --json                                   progress and summary as JSON lines (on stderr when TARGET is -)
`;

export async function run(argv: string[], command: string): Promise<number> {
  const { values, positionals } = parseCommandArgs(argv, {
    sparse: { type: 'boolean' },
    'no-sparse': { type: 'boolean' },
    'in-place': { type: 'boolean' },
    'no-verify': { type: 'boolean' },
    'continue-on-error': { type: 'boolean' },
    fsync: { type: 'boolean' },
    format: { type: 'string' },
    concurrency: { type: 'string' },
    ...KEY_OPTIONS,
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return EXIT_OK;
  }
  if (positionals.length !== 2) throw new UsageError(`${command} needs SNAPSHOT and TARGET`);
  const [spec, targetPath] = positionals;
  if (values.sparse && values['no-sparse'])
    throw new UsageError('--sparse and --no-sparse contradict each other');
  const concurrency = values.concurrency === undefined ? 12 : Number(values.concurrency);
  if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 256)
    throw new UsageError('--concurrency takes 1..256');
  const inPlace = values['in-place'] ?? false;
  const verify = !values['no-verify'];
  const format = values.format ?? 'raw';
  if (format !== 'raw' && format !== 'qcow2')
    throw new UsageError(`--format takes raw or qcow2, not ${format}`);
  const json = values.json ?? false;
  // The image owns stdout when TARGET is '-': everything for people goes to stderr then.
  const report = targetPath === '-' ? process.stderr : process.stdout;

  const cfg = resolveClientConfig(values);
  warnIfPlainHttp(cfg.server, command, json);
  const interrupt = interruptOnSigint();
  const client = new DiskvaultClient({ ...cfg, concurrency, signal: interrupt.signal });
  let hold: ChunkHold | undefined;
  let fetcher: ReturnType<typeof fetcherFor> | undefined;
  try {
    const snapshot = await selectSnapshot(client, spec, { host: values.host, disk: values.disk });
    // A missing key, a wrong passphrase or another key stops the restore below, before the target is
    // opened. With the passphrase given (not prompted for), the key file's scrypt runs while the hold is
    // taken and the manifest starts; a prompt comes first, so no download waits on a person.
    const keyOpening = keyForSnapshot(snapshot, values);
    keyOpening.catch(() => {});
    if (!passphraseGiven(values)) await keyOpening;
    // Before the manifest is read: a snapshot forgotten from here on stays readable until we are done.
    hold = await holdSnapshot(client, snapshot.id, (m) =>
      process.stderr.write(`diskvault ${command}: warning: ${m}\n`),
    );
    fetcher = fetcherFor(client, hold, interrupt.signal);
    const reader = await ManifestReader.open(await client.getManifest(snapshot.id), 'wire');
    const e2e = await keyOpening;
    const header = openedHeader(e2e, { ...reader.header, id: reader.header.id ?? snapshot.id }, snapshot.id);

    if (header.unreadable.length > 0) {
      process.stderr.write(
        `diskvault ${command}: warning: ${header.unreadable.length} range(s) of this snapshot were unreadable at backup time and will be zeros: ${header.unreadable.map(formatRange).join(', ')}\n`,
      );
    }
    const target =
      format === 'qcow2'
        ? await openQcow2Target(targetPath, { size: header.size, inPlace })
        : await openRestoreTarget(targetPath, {
            size: header.size,
            sparse: !values['no-sparse'],
            inPlace,
            fsync: values.fsync ?? false,
          });
    const progress = createRestoreProgress({
      json,
      out: report === process.stdout && !json ? process.stderr : report,
      snapshot: header.id,
      size: header.size,
    });
    let result: Awaited<ReturnType<typeof restoreSnapshot>>;
    // Chunks this restore found wrong: reported to the server once it ends, so the next backup that has
    // them uploads them again.
    const damaged: FoundDamage[] = [];
    // The chunk that stopped the restore gets the server's verdict in its own error line (one line naming
    // it); chunks left as zeros (--continue-on-error) get a line each.
    const reportFound = async (stopped?: { chunk: string; err: Error }) => {
      if (damaged.length === 0) return;
      const warn = (line: string) => process.stderr.write(`diskvault ${command}: warning: ${line}\n`);
      for (const v of await reportDamage(client, damaged, warn)) {
        if (v.id === stopped?.chunk)
          stopped.err.message = `${stopped.err.message}; ${verdictClause(v.status)}`;
        else process.stderr.write(`diskvault ${command}: ${describeVerdict(v)}\n`);
      }
    };
    try {
      result = await restoreSnapshot({
        header,
        entryBatches: reader.entryBatches(),
        fetcher,
        ...(e2e ? { e2e: workerKeys(e2e) } : {}),
        target,
        inPlace,
        verify,
        continueOnError: values['continue-on-error'] ?? false,
        concurrency,
        signal: interrupt.signal,
        onProgress: (p) => progress.update(p),
        onDamage: (d) => {
          damaged.push({ chunk: d.chunk, detail: d.reason });
          process.stderr.write(
            `diskvault ${command}: chunk ${d.chunk} at offset ${d.offset} length ${d.length} is damaged, left as zeros: ${d.reason}\n`,
          );
        },
      });
    } catch (err) {
      const chunk = isDiskvaultError(err) ? err.details?.chunk : undefined;
      if (typeof chunk === 'string' && err instanceof Error && !interrupt.signal.aborted) {
        damaged.push({ chunk, detail: err.message });
        progress.stop();
        await reportFound({ chunk, err });
      }
      throw err;
    } finally {
      progress.stop();
      await target.close();
    }
    await reportFound();

    // Only once the restore ran to its end: a half-written table is better left unread.
    const table = target.kind === 'device' ? await rereadPartitionTable(targetPath) : undefined;
    if (table?.status === 'stale') process.stderr.write(`diskvault ${command}: warning: ${table.message}\n`);
    const summary = summarize(result, targetPath, table?.status === 'reread' ? table.partitions : undefined);
    report.write(json ? `${JSON.stringify(summary)}\n` : formatSummary(summary, verify));
    if (result.damaged.length > 0) {
      process.stderr.write(
        `diskvault ${command}: restore INCOMPLETE: ${result.damaged.length} damaged range(s) are zeros\n`,
      );
      return EXIT_FAILURE;
    }
    if (verify && !result.verified) {
      process.stderr.write(
        `diskvault ${command}: the restored image hashes to ${result.sha256}, the snapshot says ${result.expectedSha256}\n`,
      );
      return EXIT_FAILURE;
    }
    return header.unreadable.length > 0 ? EXIT_UNREADABLE : EXIT_OK;
  } catch (err) {
    if (!interrupt.signal.aborted) throw err;
    process.stderr.write(
      targetPath === '-'
        ? `diskvault ${command}: interrupted: the image written to stdout is incomplete\n`
        : `diskvault ${command}: interrupted: ${targetPath} holds part of the image; run the same restore with --in-place to finish it (only what is missing is fetched)\n`,
    );
    return EXIT_INTERRUPTED;
  } finally {
    interrupt.dispose();
    fetcher?.close();
    await hold?.release();
    client.close();
  }
}
