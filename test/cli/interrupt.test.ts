import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { DiskvaultClient } from '../../agent/client.js';
import { runCli, sha256File } from '../helpers/backup-e2e.js';
import { pollUntil } from '../helpers/poll.js';
import { startCli } from '../helpers/running-cli.js';
import { startTestServer } from '../helpers/server.js';

/** Ctrl-C in the middle of a real `diskvault backup` / `restore`: a clean stop, exit 130, one line. */
const MiB = 1024 * 1024;

const progressLines = (stderr: string) =>
  stderr.split('\n').filter((l) => l.startsWith('{') && JSON.parse(l).type === 'progress');

test('Ctrl-C during a backup from a slow pipe aborts the session, commits nothing and exits 130', async (t) => {
  const server = await startTestServer({ storage: 'local' });
  try {
    const env = { DISKVAULT_SERVER: server.url, DISKVAULT_TOKEN: await server.makeToken('agent', ['h']) };
    const run = startCli(['backup', '-', '--host', 'h', '--disk', 'd', '--json'], env);
    // A pipe that delivers 3 MiB and then nothing more: the backup is under way and waiting for the rest.
    run.child.stdin!.write(randomBytes(3 * MiB));
    await pollUntil(
      () => progressLines(run.stderr()).length,
      (n) => n >= 1,
      'a progress line',
    );
    run.child.kill('SIGINT');
    const { code } = await run.exit;
    t.is(code, 130);
    const lines = run.stderr().trim().split('\n');
    t.is(
      lines.at(-1),
      'diskvault backup: interrupted: nothing was committed (the upload session was aborted)',
    );
    t.false(run.stderr().includes('    at '), 'no stack trace');
    t.is(lines.filter((l) => !l.startsWith('{')).length, 1, 'one line for people');
    const client = new DiskvaultClient({ server: server.url, token: server.adminToken });
    try {
      t.deepEqual(await client.listSnapshots(), []);
    } finally {
      client.close();
    }
    // The session was ended, not left to expire.
    t.is(server.logs.filter((l) => /"method":"DELETE"/.test(l) && /\/v1\/sessions\//.test(l)).length, 1);
  } finally {
    await server.stop();
  }
});

test('Ctrl-C during a rate-limited restore stops it with exit 130; --in-place then finishes the image', async (t) => {
  const server = await startTestServer({ storage: 'local' });
  const dir = await mkdtemp(join(tmpdir(), 'dv-interrupt-'));
  try {
    const env = { DISKVAULT_SERVER: server.url, DISKVAULT_TOKEN: await server.makeToken('agent', ['h']) };
    const image = join(dir, 'disk.img');
    await writeFile(image, randomBytes(12 * MiB));
    const backup = await runCli(['backup', image, '--host', 'h', '--disk', 'd', '--json'], env);
    t.is(backup.code, 0, backup.stderr);
    const target = join(dir, 'restored.img');
    const run = startCli(
      ['restore', 'latest', target, '--host', 'h', '--disk', 'd', '--json', '--limit-download', '1M'],
      env,
    );
    // With --json and a file target, progress goes to stdout.
    const done = () =>
      progressLines(run.stdout())
        .map((l) => Number(JSON.parse(l).done ?? 0))
        .reduce((a, b) => Math.max(a, b), 0);
    await pollUntil(done, (n) => n > 0, 'restore progress');
    run.child.kill('SIGINT');
    const { code } = await run.exit;
    t.is(code, 130);
    const lines = run.stderr().trim().split('\n');
    t.is(
      lines.at(-1),
      `diskvault restore: interrupted: ${target} holds part of the image; run the same restore with --in-place to finish it (only what is missing is fetched)`,
    );
    t.false(run.stderr().includes('    at '), 'no stack trace');
    t.true(done() < 12 * MiB, 'stopped before the end');
    t.is((await stat(target)).size, 12 * MiB);
    const resumed = await runCli(
      ['restore', 'latest', target, '--host', 'h', '--disk', 'd', '--json', '--in-place'],
      env,
    );
    t.is(resumed.code, 0, resumed.stderr);
    const summary = JSON.parse(resumed.stdout.trim().split('\n').at(-1)!);
    t.true(summary.bytesReused > 0, 'what was written before Ctrl-C is kept');
    t.is(summary.bytesReused + summary.bytesFetched, 12 * MiB);
    t.is(await sha256File(target), await sha256File(image));
  } finally {
    await server.stop();
    await rm(dir, { recursive: true, force: true });
  }
});
