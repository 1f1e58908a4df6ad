import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import test from 'ava';
import { deriveE2eKeys } from '../../agent/e2e/e2e-keys.js';
import { openKeyFile, parseKeyFile } from '../../agent/key-file.js';
import { type CliRun, runCli } from '../helpers/backup-e2e.js';
import { removeDir, tempDir } from '../helpers/reliability-harness.js';

/** `diskvault key ...` as users run it (the launcher, no terminal: stdin is not a tty). */
function key(args: string[], env: Record<string, string> = {}): Promise<CliRun> {
  return runCli(['key', ...args], {
    DISKVAULT_PASSWORD: '',
    DISKVAULT_NEW_PASSWORD: '',
    DISKVAULT_PASSWORD_FILE: '',
    ...env,
  });
}

test('key create writes a 0600 key file atomically and never overwrites one; without a passphrase and no terminal it stops with one line', async (t) => {
  const dir = await tempDir('key-create');
  try {
    const file = path.join(dir, 'k.json');
    const none = await key(['create', '--out', file]);
    t.is(none.code, 2);
    t.regex(
      none.stderr,
      /^diskvault key: no passphrase for the new key: set DISKVAULT_PASSWORD, give it in a file, or run on a terminal\n/,
    );
    t.deepEqual(await readdir(dir), []);

    const made = await key(['create', '--out', file, '--json'], { DISKVAULT_PASSWORD: 'first secret' });
    t.is(made.code, 0, made.stderr);
    const out = JSON.parse(made.stdout);
    t.is((await stat(file)).mode & 0o777, 0o600);
    // Only the key file: no temporary file left beside it.
    t.deepEqual(await readdir(dir), ['k.json']);
    const text = await readFile(file, 'utf8');
    const opened = await openKeyFile(parseKeyFile(text, file), 'first secret', file);
    t.is(deriveE2eKeys(opened.master).keyId, out.keyId);

    const again = await key(['create', '--out', file], { DISKVAULT_PASSWORD: 'other' });
    t.is(again.code, 2);
    t.regex(again.stderr, /already exists; a key file is never overwritten/);
    t.is(await readFile(file, 'utf8'), text);
  } finally {
    await removeDir(dir);
  }
});

test('key add, list, remove and passwd: any slot opens the same key; the last slot and the one in use are not removed; a wrong passphrase changes nothing', async (t) => {
  const dir = await tempDir('key-slots');
  try {
    const file = path.join(dir, 'k.json');
    const pwFile = path.join(dir, 'pw');
    await writeFile(pwFile, 'from a file\n');
    t.is((await key(['create', '--out', file, '--password-file', pwFile])).code, 0);
    const keyId = JSON.parse((await key(['list', file, '--json', '--password-file', pwFile])).stdout).keyId;
    t.regex(keyId, /^[0-9a-f]{32}$/);

    const added = await key(['add', file, '--json', '--password-file', pwFile], {
      DISKVAULT_NEW_PASSWORD: 'second',
    });
    t.is(added.code, 0, added.stderr);
    const second = JSON.parse(added.stdout).slot as string;
    const listed = JSON.parse((await key(['list', file, '--json'], { DISKVAULT_PASSWORD: 'second' })).stdout);
    t.is(listed.keyId, keyId);
    t.is(listed.slots.length, 2);
    t.deepEqual(
      listed.slots.map((s: { id: string; current: boolean }) => s.current),
      listed.slots.map((s: { id: string }) => s.id === second),
    );

    const before = await readFile(file, 'utf8');
    const wrong = await key(['add', file], { DISKVAULT_PASSWORD: 'nope', DISKVAULT_NEW_PASSWORD: 'third' });
    t.is(wrong.code, 1);
    t.is(wrong.stderr, `diskvault key: wrong passphrase for the key file ${file}\n`);
    t.is(await readFile(file, 'utf8'), before);

    const self = await key(['remove', file, second], { DISKVAULT_PASSWORD: 'second' });
    t.is(self.code, 2);
    t.regex(self.stderr, /is the one your passphrase opened/);
    const first = listed.slots.find((s: { id: string }) => s.id !== second).id as string;
    const removed = await key(['remove', file, first], { DISKVAULT_PASSWORD: 'second' });
    t.is(removed.code, 0, removed.stderr);
    t.is((await key(['list', file], { DISKVAULT_PASSWORD: 'from a file' })).code, 1);

    const passwd = await key(['passwd', file, '--json'], {
      DISKVAULT_PASSWORD: 'second',
      DISKVAULT_NEW_PASSWORD: 'rotated',
    });
    t.is(passwd.code, 0, passwd.stderr);
    t.is((await key(['list', file], { DISKVAULT_PASSWORD: 'second' })).code, 1);
    const after = JSON.parse((await key(['list', file, '--json'], { DISKVAULT_PASSWORD: 'rotated' })).stdout);
    t.is(after.keyId, keyId);
    t.is(after.slots.length, 1);
    t.is((await stat(file)).mode & 0o777, 0o600);
  } finally {
    await removeDir(dir);
  }
});
