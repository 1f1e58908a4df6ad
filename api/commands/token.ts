import { resolve } from 'node:path';
import { EXIT_OK, parseCommandLine, UsageError } from '../../common/cli.js';
import { createToken, ROLES, type Role, readTokens, revokeToken } from '../token-store.js';

const USAGE = `usage: diskvault token create --role agent|admin|reader [--host H]... [--tenant T] [--data DIR] [--json]
       diskvault token list [--data DIR] [--json]
       diskvault token revoke ID [--data DIR]

Runs on the server machine against its data folder; the running server picks changes up at once.
An agent token needs at least one --host. An admin token without --tenant is a global admin.
A reader token lists and reads every snapshot, manifest and chunk of its tenant (of every tenant
without --tenant) and can change nothing: what an offsite copy pulls with (diskvault sync).
`;

/** `diskvault token`: manage API tokens in <data>/tokens.json. Prints a new token exactly once. */
export async function run(argv: string[], _command: string): Promise<number> {
  const { values, positionals } = parseCommandLine(argv, OPTIONS);
  const [action, ...rest] = positionals;
  if (values.help || !action) {
    process.stdout.write(USAGE);
    return values.help ? EXIT_OK : 2;
  }
  const dataDir = resolve(values.data ?? 'diskvault-data');
  switch (action) {
    case 'create': {
      if (rest.length) throw new UsageError(`unexpected argument ${rest[0]}`);
      const role = values.role;
      if (!ROLES.includes(role as Role)) throw new UsageError(`--role must be ${ROLES.join(', ')}`);
      const { record, token } = await createToken(dataDir, {
        role: role as Role,
        hosts: values.host ?? [],
        ...(values.tenant ? { tenant: values.tenant } : {}),
      });
      if (values.json)
        process.stdout.write(
          `${JSON.stringify({ id: record.id, role: record.role, hosts: record.hosts, tenant: record.tenant, token })}\n`,
        );
      else {
        process.stdout.write(`${token}\n`);
        process.stderr.write(
          `token ${record.id} (${record.role}, tenant ${record.tenant}${record.hosts.length ? `, hosts ${record.hosts.join(',')}` : ''}): shown once, store it now\n`,
        );
      }
      return EXIT_OK;
    }
    case 'list': {
      const tokens = (await readTokens(dataDir)) ?? [];
      const shown = tokens.map(({ hash: _hash, ...t }) => t);
      if (values.json) process.stdout.write(`${JSON.stringify(shown)}\n`);
      else if (shown.length === 0) process.stdout.write('no tokens\n');
      else {
        for (const t of shown) {
          process.stdout.write(
            `${t.id}  ${t.role.padEnd(6)}  tenant ${t.tenant.padEnd(12)}  ${t.created}  ${t.hosts.join(',') || '-'}\n`,
          );
        }
      }
      return EXIT_OK;
    }
    case 'revoke': {
      if (rest.length !== 1) throw new UsageError('token revoke needs exactly one ID');
      const record = await revokeToken(dataDir, rest[0]);
      process.stdout.write(`revoked token ${record.id}\n`);
      return EXIT_OK;
    }
    default:
      throw new UsageError(`unknown action ${action} (create, list, revoke)`);
  }
}

const OPTIONS = {
  role: { type: 'string' },
  host: { type: 'string', multiple: true },
  tenant: { type: 'string' },
  data: { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;
