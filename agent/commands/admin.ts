import { parseArgs } from 'node:util';
import type {
  ForgetResponse,
  GcReport,
  JobInfo,
  JobResponse,
  RetentionPolicy,
  SnapshotInfo,
} from '../../api/protocol.js';
import { EXIT_FAILURE, EXIT_OK, UsageError } from '../../common/cli.js';
import { DiskvaultError, type ErrorCode } from '../../common/errors.js';
import { formatBytes } from '../../common/units.js';
import { isProtectedRefusal } from '../../repo-engine/protection.js';
import { resolveClientConfig } from '../cli-support.js';
import { DiskvaultClient } from '../client.js';
import { describeVerdict } from '../damage-report.js';
import { commandKey, keyPathOf } from '../e2e/key-store.js';
import { KEY_OPTIONS, type KeyFlags } from '../e2e/snapshot-key.js';
import { verifyWithKey } from '../e2e/verify-with-key.js';
import { warnIfPlainHttp } from '../plain-http.js';
import { selectSnapshot } from '../restore/snapshot-selector.js';

/**
 * The admin commands over HTTP: forget (restic's flags), gc, verify, stats. Thin: parse flags, one request
 * (verify, gc and forget --prune: start a job and poll it), print a human summary or, with --json, the
 * server's answer.
 */
const COMMON = {
  server: { type: 'string' },
  token: { type: 'string' },
  config: { type: 'string' },
  cacert: { type: 'string', multiple: true },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

const FORGET = {
  ...COMMON,
  host: { type: 'string' },
  disk: { type: 'string' },
  'keep-last': { type: 'string' },
  'keep-hourly': { type: 'string' },
  'keep-daily': { type: 'string' },
  'keep-weekly': { type: 'string' },
  'keep-monthly': { type: 'string' },
  'keep-yearly': { type: 'string' },
  'keep-within': { type: 'string' },
  'keep-within-hourly': { type: 'string' },
  'keep-within-daily': { type: 'string' },
  'keep-within-weekly': { type: 'string' },
  'keep-within-monthly': { type: 'string' },
  'keep-within-yearly': { type: 'string' },
  'keep-tag': { type: 'string', multiple: true },
  'dry-run': { type: 'boolean', short: 'n' },
  prune: { type: 'boolean' },
} as const;

const USAGE: Record<string, string> = {
  forget: `usage: diskvault forget [--host H] [--disk D] [--keep-last N] [--keep-hourly N] [--keep-daily N]
         [--keep-weekly N] [--keep-monthly N] [--keep-yearly N] [--keep-within DURATION]
         [--keep-within-{hourly,daily,weekly,monthly,yearly} DURATION] [--keep-tag T]...
         [--dry-run] [--prune] [--json]
       diskvault forget SNAPSHOT... [--host H --disk D] [--dry-run] [--prune] [--json]
  DURATION is restic's form: 1y2m3d4h (m = months). --prune runs gc afterwards.
  SNAPSHOT is an id, a unique id prefix, or 'latest' (with --host and --disk); every one is found
  before any is removed.
`,
  gc: 'usage: diskvault gc [--json]\n',
  verify:
    'usage: diskvault verify [--read-data] [--json]\n       diskvault verify --key FILE [--password-file FILE] --read-data [--json]\n  exits 1 when a problem is found. With --key (or DISKVAULT_KEY) the agent checks every snapshot of that\n  end-to-end key itself: each chunk downloaded, authenticated, decrypted and checked against its keyed id.\n',
  stats: 'usage: diskvault stats [--json]\n',
};
const CONNECTION_HELP =
  '\nAll take --server URL --token T [--config FILE] [--cacert FILE] (or DISKVAULT_SERVER / DISKVAULT_TOKEN).\n';

const COUNT_FLAGS = {
  'keep-last': 'last',
  'keep-hourly': 'hourly',
  'keep-daily': 'daily',
  'keep-weekly': 'weekly',
  'keep-monthly': 'monthly',
  'keep-yearly': 'yearly',
} as const;
const WITHIN_FLAGS = {
  'keep-within': 'within',
  'keep-within-hourly': 'withinHourly',
  'keep-within-daily': 'withinDaily',
  'keep-within-weekly': 'withinWeekly',
  'keep-within-monthly': 'withinMonthly',
  'keep-within-yearly': 'withinYearly',
} as const;

export async function run(argv: string[], command: string): Promise<number> {
  const options =
    command === 'forget'
      ? FORGET
      : command === 'verify'
        ? { ...COMMON, 'read-data': { type: 'boolean' }, ...KEY_OPTIONS }
        : COMMON;
  if (!USAGE[command]) throw new UsageError(`unknown admin command ${command}`);
  let values: Record<string, string | boolean | string[] | undefined>;
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args: argv,
      options: options as typeof COMMON,
      allowPositionals: command === 'forget',
      strict: true,
    }));
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if (values.help) {
    process.stdout.write(USAGE[command] + CONNECTION_HELP);
    return EXIT_OK;
  }
  const cfg = resolveClientConfig(values as Parameters<typeof resolveClientConfig>[0]);
  const json = values.json === true;
  warnIfPlainHttp(cfg.server, command, json);
  const client = new DiskvaultClient(cfg);
  try {
    switch (command) {
      case 'forget':
        return positionals.length > 0
          ? await forgetSnapshots(client, positionals, values, json)
          : await forget(client, values, json);
      case 'gc':
        return await gc(client, json);
      case 'verify':
        if (keyPathOf(values.key as string | undefined) !== undefined)
          return await verifyKey(client, values as KeyFlags, values['read-data'] === true, json);
        return await verify(client, values['read-data'] === true, json);
      default:
        return await stats(client, json);
    }
  } finally {
    client.close();
  }
}

export function policyFromFlags(values: Record<string, unknown>): RetentionPolicy {
  const policy: RetentionPolicy = {};
  for (const [flag, key] of Object.entries(COUNT_FLAGS)) {
    const v = values[flag];
    if (v === undefined) continue;
    if (typeof v !== 'string' || !/^-?\d+$/.test(v) || Number(v) < -1)
      throw new UsageError(`--${flag} needs a whole number (-1 = unlimited)`);
    policy[key] = Number(v);
  }
  for (const [flag, key] of Object.entries(WITHIN_FLAGS)) {
    const v = values[flag];
    if (v === undefined) continue;
    if (typeof v !== 'string' || !/^(\d+[ymdh])+$/.test(v))
      throw new UsageError(`--${flag} needs a duration like 1y2m3d4h`);
    policy[key] = v;
  }
  const tags = values['keep-tag'];
  if (Array.isArray(tags) && tags.length > 0) policy.tags = tags as string[];
  if (Object.keys(policy).length === 0)
    throw new UsageError('give at least one --keep-* rule; forget without one would remove everything');
  return policy;
}

async function forget(
  client: DiskvaultClient,
  values: Record<string, unknown>,
  json: boolean,
): Promise<number> {
  const policy = policyFromFlags(values);
  const dryRun = values['dry-run'] === true;
  const body = {
    policy,
    dryRun,
    prune: values.prune === true,
    ...(typeof values.host === 'string' ? { host: values.host } : {}),
    ...(typeof values.disk === 'string' ? { disk: values.disk } : {}),
  };
  const out =
    body.prune && !dryRun
      ? await runJob(
          client,
          'forget',
          () => client.forget(body) as Promise<JobResponse<ForgetResponse>>,
          json,
        )
      : ((await client.forget(body)) as ForgetResponse);
  if (json) {
    process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
    return EXIT_OK;
  }
  for (const g of out.plan.groups) {
    process.stdout.write(`${g.host} ${g.disk}: keep ${g.keep.length}, remove ${g.remove.length}\n`);
    for (const k of g.keep)
      process.stdout.write(
        `  keep    ${k.snapshot.id.slice(0, 12)}  ${k.snapshot.time}  ${k.reasons.join(', ')}\n`,
      );
    for (const r of g.remove) process.stdout.write(`  remove  ${r.id.slice(0, 12)}  ${r.time}\n`);
  }
  const removable = out.plan.groups.reduce((n, g) => n + g.remove.length, 0);
  process.stdout.write(
    dryRun ? `dry run: would remove ${removable} snapshots\n` : `removed ${out.removed} snapshots\n`,
  );
  if (out.gc) printGc(out.gc);
  return EXIT_OK;
}

function printGc(r: GcReport): void {
  process.stdout.write(
    `gc: deleted ${r.chunksDeleted} chunks (${formatBytes(r.bytesFreed)}) and ${r.orphansDeleted} orphans, kept ${r.chunksProtected} unreferenced (${r.chunksHeld} held by open sessions and snapshot leases), ${r.seconds.toFixed(1)} s\n`,
  );
  for (const h of r.holders)
    process.stdout.write(
      `  kept ${h.chunks} for ${h.kind} ${h.id} (${h.tenant === 'default' ? '' : `${h.tenant}:`}${h.host}/${h.disk}${h.snapshot ? `, snapshot ${h.snapshot.slice(0, 12)}` : ''}), until ${h.expiresAt}\n`,
    );
}

/**
 * Starts a job with `start` and polls it to its end. As backup and restore do: JSON lines on stderr with
 * --json (the last one too), a live line on a terminal. A failed job becomes its error.
 */
async function runJob<R>(
  client: DiskvaultClient,
  label: string,
  start: () => Promise<JobResponse<R>>,
  json: boolean,
): Promise<R> {
  let job: JobInfo<R> = (await start()).job;
  const tty = process.stderr.isTTY === true;
  while (job.state === 'running') {
    await new Promise((r) => setTimeout(r, 500));
    job = (await client.getJob<R>(job.id)).job;
    const p = job.progress;
    if (!p) continue;
    if (json) process.stderr.write(`${JSON.stringify({ type: 'progress', job: job.id, ...p })}\n`);
    else if (tty) {
      const pct = p.total > 0 ? ` ${((100 * p.done) / p.total).toFixed(1)}%` : '';
      process.stderr.write(`\r${label}: ${p.phase} ${p.done}${p.total > 0 ? `/${p.total}` : ''}${pct}   `);
    }
  }
  if (tty && !json) process.stderr.write('\n');
  if (job.state === 'failed' || !job.result) {
    throw new DiskvaultError(
      (job.error?.code as ErrorCode) ?? 'Unavailable',
      `${label} failed: ${job.error?.message ?? 'no result'}`,
    );
  }
  return job.result;
}

/**
 * restic's `forget ID...`: the named snapshots, each resolved (id, unique prefix, or latest) before any is
 * deleted, so a mistyped third id removes nothing.
 */
async function forgetSnapshots(
  client: DiskvaultClient,
  specs: string[],
  values: Record<string, unknown>,
  json: boolean,
): Promise<number> {
  const policyFlags = [...Object.keys(COUNT_FLAGS), ...Object.keys(WITHIN_FLAGS), 'keep-tag'];
  const mixed = policyFlags.find((f) => values[f] !== undefined);
  if (mixed) throw new UsageError(`give snapshot ids or a policy (--${mixed}), not both`);
  const filter = {
    ...(typeof values.host === 'string' ? { host: values.host } : {}),
    ...(typeof values.disk === 'string' ? { disk: values.disk } : {}),
  };
  const chosen: SnapshotInfo[] = [];
  for (const spec of specs) {
    const s = await selectSnapshot(client, spec, filter);
    if (!chosen.some((c) => c.id === s.id)) chosen.push(s);
  }
  const dryRun = values['dry-run'] === true;
  const removed: SnapshotInfo[] = [];
  // A protected snapshot is kept and said so; the server would refuse its removal anyway (409, 'protected').
  const kept: { snapshot: SnapshotInfo; reasons: string[] }[] = [];
  const keep = (s: SnapshotInfo) => {
    kept.push({ snapshot: s, reasons: ['protected'] });
    if (!json)
      process.stdout.write(`kept    ${s.id.slice(0, 12)}  ${s.host} ${s.disk}  ${s.time}  protected\n`);
  };
  for (const s of chosen) {
    if (s.protected) keep(s);
    else if (dryRun) continue;
    else {
      try {
        await client.deleteSnapshot(s.id);
      } catch (err) {
        if (!isProtectedRefusal(err)) throw err;
        keep(s);
        continue;
      }
      removed.push(s);
      if (!json) process.stdout.write(`removed ${s.id.slice(0, 12)}  ${s.host} ${s.disk}  ${s.time}\n`);
    }
  }
  const removable = chosen.filter((s) => !kept.some((k) => k.snapshot.id === s.id));
  const report =
    values.prune === true && !dryRun ? await runJob(client, 'gc', () => client.startGc(), json) : undefined;
  if (json) {
    const out = dryRun
      ? { dryRun, wouldRemove: removable, kept }
      : { dryRun, removed, kept, ...(report ? { gc: report } : {}) };
    process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
    return EXIT_OK;
  }
  if (dryRun) {
    for (const s of removable)
      process.stdout.write(`would remove ${s.id.slice(0, 12)}  ${s.host} ${s.disk}  ${s.time}\n`);
    process.stdout.write(`dry run: would remove ${removable.length} snapshots\n`);
  } else process.stdout.write(`removed ${removed.length} snapshots\n`);
  if (report) printGc(report);
  return EXIT_OK;
}

async function gc(client: DiskvaultClient, json: boolean): Promise<number> {
  const report = await runJob(client, 'gc', () => client.startGc(), json);
  if (json) process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  else printGc(report);
  return EXIT_OK;
}

async function verify(client: DiskvaultClient, readData: boolean, json: boolean): Promise<number> {
  const r = await runJob(client, 'verify', () => client.startVerify({ readData }), json);
  if (json) process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
  else {
    process.stdout.write(
      `checked ${r.snapshotsChecked} snapshots, ${r.chunksChecked} chunks, read ${formatBytes(r.bytesRead)} in ${r.seconds.toFixed(1)} s\n`,
    );
    for (const m of r.badManifests) process.stdout.write(`bad manifest ${m.snapshot}: ${m.detail}\n`);
    for (const p of r.problems)
      process.stdout.write(
        `${p.kind} chunk ${p.chunk} (${p.detail}), used by ${p.snapshots.join(', ') || 'no snapshot'}\n`,
      );
    if (r.refcountMismatches)
      process.stdout.write(`${r.refcountMismatches} refcounts differ from a recount\n`);
    for (const h of r.healed ?? [])
      process.stdout.write(
        `healed chunk ${h.chunk} (was: ${h.detail}), used by ${h.snapshots.join(', ') || 'no snapshot'}\n`,
      );
    if (r.healedSnapshots?.length)
      process.stdout.write(`snapshots restorable again: ${r.healedSnapshots.join(', ')}\n`);
    process.stdout.write(r.ok ? 'no problems found\n' : 'PROBLEMS FOUND\n');
  }
  return r.ok ? EXIT_OK : EXIT_FAILURE;
}

/** `verify --key FILE --read-data`: the agent opens every chunk of the key's snapshots (agent/e2e/). */
async function verifyKey(
  client: DiskvaultClient,
  flags: KeyFlags,
  readData: boolean,
  json: boolean,
): Promise<number> {
  if (!readData) throw new UsageError('verify --key checks chunk content from the agent: add --read-data');
  const keys = await commandKey(flags);
  if (!keys) throw new UsageError('verify --key needs a key file');
  const r = await verifyWithKey(client, keys, {
    warn: (line) => process.stderr.write(`diskvault verify: warning: ${line}\n`),
    onProgress: json
      ? undefined
      : (done, total) => {
          if (process.stderr.isTTY) process.stderr.write(`\rchecked ${done}/${total} chunks`);
        },
  });
  if (!json && process.stderr.isTTY) process.stderr.write('\n');
  if (json) process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
  else {
    process.stdout.write(
      `key ${r.keyId}: checked ${r.snapshotsChecked} snapshots, ${r.chunksChecked} chunks, read ${formatBytes(r.bytesRead)} in ${r.seconds.toFixed(1)} s\n`,
    );
    for (const m of r.badManifests) process.stdout.write(`bad manifest ${m.snapshot}: ${m.detail}\n`);
    for (const p of r.problems)
      process.stdout.write(`${p.kind} chunk ${p.chunk} (${p.detail}), used by ${p.snapshots.join(', ')}\n`);
    for (const v of r.reported) process.stdout.write(`${describeVerdict(v)}\n`);
    process.stdout.write(r.ok ? 'no problems found\n' : 'PROBLEMS FOUND\n');
  }
  return r.ok ? EXIT_OK : EXIT_FAILURE;
}

async function stats(client: DiskvaultClient, json: boolean): Promise<number> {
  const s = await client.stats();
  if (json) {
    process.stdout.write(`${JSON.stringify(s, null, 2)}\n`);
    return EXIT_OK;
  }
  process.stdout.write(`${s.snapshots} snapshots, ${formatBytes(s.logicalBytes)} logical\n`);
  if (s.repository) {
    const r = s.repository;
    process.stdout.write(
      `${r.uniqueChunks} unique chunks, ${formatBytes(r.rawBytes)} raw, ${formatBytes(r.storedBytes)} stored; dedup ${r.dedupRatio.toFixed(2)}x, compression ${r.compressionRatio.toFixed(2)}x\n`,
    );
  }
  if (s.tenant)
    process.stdout.write(
      `tenant ${s.tenant.tenant}: ${s.tenant.chunks} distinct chunks, ${formatBytes(s.tenant.rawBytes)} of deduplicated data\n`,
    );
  for (const h of s.perHost)
    process.stdout.write(`  ${h.host}: ${h.snapshots} snapshots, ${formatBytes(h.logicalBytes)}\n`);
  if (s.disks.length > 0) process.stdout.write('newest snapshot of each disk:\n');
  const now = Date.now();
  for (const d of s.disks) {
    const tenant = s.scope === 'repository' && d.tenant !== 'default' ? `${d.tenant}:` : '';
    const unreadable = d.newest.unreadableBytes
      ? `, ${formatBytes(d.newest.unreadableBytes)} UNREADABLE`
      : '';
    process.stdout.write(
      `  ${tenant}${d.host}/${d.disk}: ${d.newest.time} (${formatAge(now - Date.parse(d.newest.time))}), ${formatBytes(d.newest.size)}, ${d.snapshots} snapshot${d.snapshots === 1 ? '' : 's'}${unreadable}\n`,
    );
  }
  return EXIT_OK;
}

/** How long ago, at the scale a nightly schedule is read in. */
function formatAge(ms: number): string {
  if (ms < 0) return 'in the future';
  const hours = ms / 3_600_000;
  if (hours < 1) return `${Math.round(ms / 60_000)} min ago`;
  return hours < 48 ? `${hours.toFixed(1)} h ago` : `${(hours / 24).toFixed(1)} days ago`;
}
