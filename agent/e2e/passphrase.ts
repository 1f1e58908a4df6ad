import { readFileSync } from 'node:fs';
import { UsageError } from '../../common/cli.js';

/**
 * Where a passphrase comes from, in restic's order: --password-file FILE, DISKVAULT_PASSWORD_FILE,
 * DISKVAULT_PASSWORD, else a prompt when stdin and stderr are a terminal. Without any of them the command
 * stops with one line saying how to give one: a backup run by cron must never hang on a prompt.
 */
export interface PassphraseSources {
  passwordFile?: string;
  env?: NodeJS.ProcessEnv;
}

/** The first line of a password file (a trailing newline is not part of the passphrase). */
export function readPasswordFile(path: string): string {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new UsageError(`cannot read the password file ${path}: ${(err as Error).message}`);
  }
  const line = text.split(/\r?\n/)[0] ?? '';
  if (line.length === 0) throw new UsageError(`the password file ${path} is empty`);
  return line;
}

function isInteractive(): boolean {
  return process.stdin.isTTY === true && process.stderr.isTTY === true;
}

/** Reads one line from the terminal without echoing it. */
export async function promptHidden(question: string): Promise<string> {
  const stdin = process.stdin;
  process.stderr.write(question);
  stdin.setRawMode(true);
  stdin.resume();
  stdin.setEncoding('utf8');
  try {
    return await new Promise<string>((resolve, reject) => {
      let typed = '';
      const onData = (chunk: string) => {
        for (const ch of chunk) {
          if (ch === '\r' || ch === '\n') {
            stdin.off('data', onData);
            process.stderr.write('\n');
            resolve(typed);
            return;
          }
          if (ch === '\u0003') {
            stdin.off('data', onData);
            process.stderr.write('\n');
            reject(new UsageError('interrupted'));
            return;
          }
          if (ch === '\u007f' || ch === '\b') typed = typed.slice(0, -1);
          else typed += ch;
        }
      };
      stdin.on('data', onData);
    });
  } finally {
    stdin.setRawMode(false);
    stdin.pause();
  }
}

/** The passphrase of an existing key file. */
export async function passphraseFor(keyPath: string, src: PassphraseSources): Promise<string> {
  const env = src.env ?? process.env;
  if (src.passwordFile) return readPasswordFile(src.passwordFile);
  if (env.DISKVAULT_PASSWORD_FILE) return readPasswordFile(env.DISKVAULT_PASSWORD_FILE);
  if (env.DISKVAULT_PASSWORD !== undefined && env.DISKVAULT_PASSWORD !== '') return env.DISKVAULT_PASSWORD;
  if (isInteractive()) return promptHidden(`passphrase for the key file ${keyPath}: `);
  throw new UsageError(
    `no passphrase for the key file ${keyPath}: set DISKVAULT_PASSWORD, give --password-file FILE, or run on a terminal`,
  );
}

/**
 * A new passphrase (key create, key add, key passwd): `file` (--new-password-file, or --password-file for
 * key create), the environment variable `envName`, or asked twice on a terminal.
 */
export async function newPassphrase(
  what: string,
  file: string | undefined,
  envName: string,
  env: NodeJS.ProcessEnv = process.env,
): Promise<string> {
  if (file) return readPasswordFile(file);
  const fromEnv = env[envName];
  if (fromEnv !== undefined && fromEnv !== '') return fromEnv;
  if (!isInteractive())
    throw new UsageError(`no ${what}: set ${envName}, give it in a file, or run on a terminal`);
  const first = await promptHidden(`${what}: `);
  if (first.length === 0) throw new UsageError('an empty passphrase is not accepted');
  const again = await promptHidden(`${what} again: `);
  if (again !== first) throw new UsageError('the passphrases differ');
  return first;
}
