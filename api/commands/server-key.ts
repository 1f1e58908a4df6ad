import { resolve } from 'node:path';
import { EXIT_FAILURE, EXIT_OK, parseCommandLine, UsageError } from '../../common/cli.js';
import { RepositoryKeyFile, RepositoryKeyFileError, repositoryKeyPath } from '../repository-key-file.js';

const USAGE = `usage: diskvault server key show [--data DIR] [--repository-key-file FILE] [--json]

Prints the repository key of the server's encrypted repository (one line of 64 hex digits). Keep a copy
away from the storage and the server (a password manager, a safe): a repository whose key is lost cannot be
read by anyone. To bring it back, write the line to DIR/repository.key (mode 0600) or give
--repository-key-file FILE.
`;

/** `diskvault server key`: the repository key, read from the data folder or the file the server is given. */
export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseCommandLine(argv, OPTIONS);
  const [action, ...rest] = positionals;
  if (values.help || !action) {
    process.stdout.write(USAGE);
    return values.help ? EXIT_OK : 2;
  }
  if (action !== 'show') throw new UsageError(`unknown action ${action} (show)`);
  if (rest.length) throw new UsageError(`unexpected argument ${rest[0]}`);
  const where = repositoryKeyPath(
    resolve(values.data ?? 'diskvault-data'),
    values['repository-key-file'] ? resolve(values['repository-key-file']) : undefined,
  );
  let key: Buffer | undefined;
  try {
    key = await new RepositoryKeyFile(where.path, where.given).load();
  } catch (err) {
    if (!(err instanceof RepositoryKeyFileError)) throw err;
    process.stderr.write(`diskvault server key: ${err.message}\n`);
    return EXIT_FAILURE;
  }
  if (!key) {
    process.stderr.write(
      `diskvault server key: no repository key at ${where.path} (a plaintext repository has none; an encrypted one is created with it)\n`,
    );
    return EXIT_FAILURE;
  }
  if (values.json)
    process.stdout.write(`${JSON.stringify({ path: where.path, key: key.toString('hex') })}\n`);
  else {
    process.stdout.write(`${key.toString('hex')}\n`);
    process.stderr.write(
      `repository key from ${where.path}: keep a copy away from the storage; without it the repository cannot be read\n`,
    );
  }
  return EXIT_OK;
}

const OPTIONS = {
  data: { type: 'string' },
  'repository-key-file': { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;
