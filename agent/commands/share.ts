import type { ShareInfo } from '../../api/protocol.js';
import { EXIT_OK, UsageError } from '../../common/cli.js';
import { parseFixedDurationMs } from '../../repo-engine/durations.js';
import { CLIENT_OPTIONS, parseCommandArgs, resolveClientConfig } from '../cli-support.js';
import { DiskvaultClient } from '../client.js';
import { warnIfPlainHttp } from '../plain-http.js';
import { selectSnapshot } from '../restore/snapshot-selector.js';

const USAGE = `usage: diskvault share SNAPSHOT --expires DURATION [--host NAME --disk NAME] [--json]
       diskvault share --list [--json]
       diskvault share --revoke ID
       (and --server URL --token T [--cacert FILE], or their environment variables)

Prints a URL that serves the snapshot's raw disk image to anyone who has it, without a token, until it
expires (at most 30d) or is revoked: for curl | dd, qemu-img convert, or a qcow2 overlay backed by it.
SNAPSHOT is an id, an id prefix, or 'latest' (with --host and --disk). DURATION: 30m, 24h, 7d, 1h30m.
Admins may share their tenant's snapshots, agent tokens their own hosts'. Treat the URL as a password.
`;

const OPTIONS = {
  ...CLIENT_OPTIONS,
  expires: { type: 'string' },
  list: { type: 'boolean' },
  revoke: { type: 'string' },
} as const;

export async function run(argv: string[], _command: string): Promise<number> {
  const { values, positionals } = parseCommandArgs(argv, OPTIONS);
  if (values.help) {
    process.stdout.write(USAGE);
    return EXIT_OK;
  }
  const modes = [positionals.length > 0, values.list === true, values.revoke !== undefined].filter(Boolean);
  if (modes.length !== 1) throw new UsageError('give a SNAPSHOT to share, or --list, or --revoke ID');
  if (positionals.length > 1) throw new UsageError('share one snapshot at a time');
  if (positionals.length === 0 && values.expires !== undefined)
    throw new UsageError('--expires goes with a SNAPSHOT to share');
  const expiresInSeconds = positionals.length === 1 ? shareSeconds(values.expires) : 0;
  const cfg = resolveClientConfig(values);
  warnIfPlainHttp(cfg.server, 'share', values.json === true);
  const client = new DiskvaultClient(cfg);
  try {
    if (values.list) {
      const shares = await client.listShares();
      process.stdout.write(values.json ? `${JSON.stringify(shares, null, 2)}\n` : formatTable(shares));
      return EXIT_OK;
    }
    if (values.revoke !== undefined) {
      const share = await client.revokeShare(values.revoke);
      process.stdout.write(
        values.json
          ? `${JSON.stringify(share)}\n`
          : `revoked share link ${share.id} (snapshot ${share.snapshot})\n`,
      );
      return EXIT_OK;
    }
    const snap = await selectSnapshot(client, positionals[0], { host: values.host, disk: values.disk });
    const { share, path } = await client.createShare({ snapshot: snap.id, expiresInSeconds });
    const url = `${cfg.server}${path}`;
    if (values.json) process.stdout.write(`${JSON.stringify({ ...share, url })}\n`);
    else {
      process.stdout.write(`${url}\n`);
      process.stderr.write(
        `share link ${share.id}: ${snap.host}/${snap.disk} snapshot ${snap.id.slice(0, 12)}, ${snap.size} bytes, until ${share.expires}\nrevoke it with: diskvault share --revoke ${share.id}\n`,
      );
    }
    return EXIT_OK;
  } finally {
    client.close();
  }
}

/** --expires as whole seconds: a duration with units (30m, 24h, 7d, 1h30m), never a bare number. */
function shareSeconds(expires: string | undefined): number {
  if (expires === undefined) throw new UsageError('--expires DURATION is required (e.g. 24h)');
  try {
    if (/^\d+$/.test(expires)) throw new Error('a unit is needed');
    return Math.round(parseFixedDurationMs(expires) / 1000);
  } catch {
    throw new UsageError(`--expires ${expires}: expected a duration like 30m, 24h or 7d`);
  }
}

function formatTable(list: ShareInfo[]): string {
  if (list.length === 0) return 'no share links\n';
  const head = ['ID', 'SNAPSHOT', 'HOST', 'DISK', 'EXPIRES (UTC)', 'CREATED BY'];
  const rows = list.map((s) => [
    s.id,
    s.snapshot.slice(0, 12),
    s.host,
    s.disk,
    s.expires.replace('T', ' ').replace(/\.\d+Z$/, 'Z'),
    s.createdBy,
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) =>
    r
      .map((c, i) => c.padEnd(widths[i]))
      .join('  ')
      .trimEnd();
  return `${[line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n')}\n`;
}
