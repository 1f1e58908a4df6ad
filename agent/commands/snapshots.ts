import { parseArgs } from 'node:util';
import type { SnapshotInfo } from '../../api/protocol.js';
import { EXIT_OK, UsageError } from '../../common/cli.js';
import { CLIENT_OPTIONS, resolveClientConfig } from '../cli-support.js';
import { DiskvaultClient } from '../client.js';
import { type E2eKeys, openSecrets, secretsContext } from '../e2e/e2e-keys.js';
import { commandKey } from '../e2e/key-store.js';
import { KEY_OPTIONS } from '../e2e/snapshot-key.js';
import { warnIfPlainHttp } from '../plain-http.js';

const USAGE = `usage: diskvault snapshots [--host NAME] [--disk NAME] [--json] [--server URL --token T] [--cacert FILE]
                          [--key FILE [--password-file FILE]]

Lists snapshots, oldest first. --json prints an array of objects (id, host, disk, time, size, sha256,
chunkCount, tags, unreadable, sourceFormat, protected, and e2e { keyId } for an end-to-end snapshot).
An end-to-end snapshot's image SHA-256 is sealed: the server lists it empty, and --key FILE (or
DISKVAULT_KEY) opens it for the snapshots of that key.
`;

export async function run(argv: string[], command: string): Promise<number> {
  let parsed: ReturnType<typeof parseSnapshotsArgs>;
  try {
    parsed = parseSnapshotsArgs(argv);
  } catch (err) {
    throw new UsageError(`${(err as Error).message}`);
  }
  const { values } = parsed;
  if (values.help) {
    process.stdout.write(USAGE);
    return EXIT_OK;
  }
  void command;
  const cfg = resolveClientConfig(values);
  warnIfPlainHttp(cfg.server, command, values.json === true);
  const client = new DiskvaultClient(cfg);
  try {
    const listed = (await client.listSnapshots({ host: values.host, disk: values.disk })).sort(
      (a, b) => Date.parse(a.time) - Date.parse(b.time) || a.id.localeCompare(b.id),
    );
    const keys = await commandKey(values);
    const list = keys ? listed.map((s) => withOpenedSecrets(keys, s)) : listed;
    process.stdout.write(
      values.json ? `${JSON.stringify(list.map(publicFields), null, 2)}\n` : formatTable(list),
    );
    return EXIT_OK;
  } finally {
    client.close();
  }
}

function parseSnapshotsArgs(argv: string[]) {
  return parseArgs({
    args: argv,
    allowPositionals: false,
    options: {
      ...CLIENT_OPTIONS,
      ...KEY_OPTIONS,
    },
  });
}

function publicFields(s: SnapshotInfo) {
  return {
    id: s.id,
    host: s.host,
    disk: s.disk,
    time: new Date(s.time).toISOString(),
    size: s.size,
    sha256: s.sha256,
    chunkCount: s.chunkCount,
    tags: s.tags,
    unreadable: s.unreadable,
    sourceFormat: s.sourceFormat,
    protected: s.protected === true,
    ...(s.e2e ? { e2e: { keyId: s.e2e.keyId } } : {}),
  };
}

/** `s` with its sealed image hash opened when it is a snapshot of `keys` (others are left as listed). */
function withOpenedSecrets(keys: E2eKeys, s: SnapshotInfo): SnapshotInfo {
  if (s.e2e?.keyId !== keys.keyId) return s;
  return { ...s, sha256: openSecrets(keys, s.e2e.sealed, secretsContext(s), s.id).sha256 };
}

/** A table for people; ids are shortened to 12 characters, which `diskvault restore` accepts as a prefix. */
export function formatTable(list: SnapshotInfo[]): string {
  if (list.length === 0) return 'no snapshots\n';
  const rows = list.map((s) => [
    s.id.slice(0, 12),
    new Date(s.time)
      .toISOString()
      .replace('T', ' ')
      .replace(/\.\d+Z$/, 'Z'),
    s.host,
    s.disk,
    humanSize(s.size),
    [
      s.protected ? 'protected' : '',
      s.e2e ? `key ${s.e2e.keyId.slice(0, 8)}${s.sha256 ? '' : ' (sealed)'}` : '',
      s.unreadable.length > 0 ? `${s.unreadable.length} unreadable` : '',
    ]
      .filter((n) => n !== '')
      .join(', '),
    s.tags.join(','),
  ]);
  const head = ['ID', 'TIME (UTC)', 'HOST', 'DISK', 'SIZE', 'NOTES', 'TAGS'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) =>
    r
      .map((c, i) => (i === 4 ? c.padStart(widths[i]) : c.padEnd(widths[i])))
      .join('  ')
      .trimEnd();
  return `${[line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n')}\n${list.length} snapshot(s)\n`;
}

function humanSize(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(1)} ${units[u]}`;
}
