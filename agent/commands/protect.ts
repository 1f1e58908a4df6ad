import type { SnapshotInfo } from '../../api/protocol.js';
import { EXIT_OK, parseCommandLine, UsageError } from '../../common/cli.js';
import { resolveClientConfig } from '../cli-support.js';
import { DiskvaultClient } from '../client.js';
import { warnIfPlainHttp } from '../plain-http.js';
import { selectSnapshot } from '../restore/snapshot-selector.js';

const USAGE = `usage: diskvault protect SNAPSHOT... [--host H --disk D] [--json]
       diskvault unprotect SNAPSHOT... [--host H --disk D] [--json]

Protects snapshots (admin): forget (by policy or by id), delete and gc never remove a protected snapshot;
forget lists it as kept, reason "protected". unprotect lifts the protection. SNAPSHOT is an id, a unique id
prefix, or 'latest' (with --host and --disk); every name is found before any snapshot is changed.
Both take --server URL --token T [--config FILE] [--cacert FILE] (or DISKVAULT_SERVER / DISKVAULT_TOKEN).
`;

const OPTIONS = {
  server: { type: 'string' },
  token: { type: 'string' },
  config: { type: 'string' },
  cacert: { type: 'string', multiple: true },
  host: { type: 'string' },
  disk: { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

/** `diskvault protect` and `diskvault unprotect`: resolve every name, then one idempotent request each. */
export async function run(argv: string[], command: string): Promise<number> {
  const { values, positionals } = parseCommandLine(argv, OPTIONS);
  if (values.help) {
    process.stdout.write(USAGE);
    return EXIT_OK;
  }
  if (positionals.length === 0) throw new UsageError(`${command} needs at least one SNAPSHOT`);
  const protect = command === 'protect';
  const cfg = resolveClientConfig(values);
  warnIfPlainHttp(cfg.server, command, values.json === true);
  const client = new DiskvaultClient(cfg);
  try {
    const filter = {
      ...(values.host ? { host: values.host } : {}),
      ...(values.disk ? { disk: values.disk } : {}),
    };
    const chosen: SnapshotInfo[] = [];
    for (const spec of positionals) {
      const s = await selectSnapshot(client, spec, filter);
      if (!chosen.some((c) => c.id === s.id)) chosen.push(s);
    }
    const done: SnapshotInfo[] = [];
    for (const s of chosen) {
      done.push(await client.setProtection(s.id, protect));
      if (!values.json)
        process.stdout.write(
          `${protect ? 'protected' : 'unprotected'} ${s.id.slice(0, 12)}  ${s.host} ${s.disk}  ${s.time}\n`,
        );
    }
    if (values.json) process.stdout.write(`${JSON.stringify({ [command]: done }, null, 2)}\n`);
    return EXIT_OK;
  } finally {
    client.close();
  }
}
