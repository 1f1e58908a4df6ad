import { spawn } from 'node:child_process';
import { chmod, copyFile, mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { DISKVAULT } from '../helpers/diskvault-command.js';
import { spawnServer } from '../helpers/server.js';

/**
 * agent/diskvault, the command users run: it must hand every argument, standard stream and exit code to
 * node unchanged, and add glibc's malloc tunables (huge pages, top pad) that the caller has not decided on already.
 */

function run(
  cmd: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  input?: string,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    // A child that exits before reading its input (the launcher refusing to start) closes the pipe under
    // this write: EPIPE then says nothing the exit code and output do not.
    child.stdin.on('error', () => {});
    child.stdin.end(input ?? '');
  });
}

/**
 * A folder whose `node` prints what the launcher gave it: GLIBC_TUNABLES, then each argument on a line of
 * its own, then its standard input; and exits 7. The launcher's own logic is what is under test here.
 */
async function fakeNodeDir(t: { teardown(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'dv-launcher-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const node = path.join(dir, 'node');
  await writeFile(
    node,
    [
      '#!/bin/sh',
      // A shell expansion, not a template: unset shows as "unset", set-but-empty as nothing.
      // biome-ignore lint/suspicious/noTemplateCurlyInString: shell syntax
      'printf "tunables=%s\\n" "${GLIBC_TUNABLES-unset}"',
      'for a in "$@"; do printf "arg=[%s]\\n" "$a"; done',
      'cat',
      'exit 7',
      '',
    ].join('\n'),
  );
  await chmod(node, 0o755);
  return dir;
}

const envWith = (dir: string, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv => {
  const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${dir}:${process.env.PATH ?? ''}`, ...extra };
  if (!('GLIBC_TUNABLES' in extra)) delete env.GLIBC_TUNABLES;
  return env;
};

test('the launcher adds the huge-page tunable and passes arguments, stdin and the exit code through', async (t) => {
  const dir = await fakeNodeDir(t);
  const r = await run(
    DISKVAULT,
    ['backup', 'a file with spaces', '', '--json'],
    envWith(dir),
    'from stdin\n',
  );
  t.is(r.code, 7);
  const lines = r.stdout.trimEnd().split('\n');
  t.deepEqual(lines, [
    'tunables=glibc.malloc.hugetlb=1:glibc.malloc.top_pad=67108864',
    `arg=[${path.resolve(path.dirname(DISKVAULT), '..', 'dist', 'agent', 'cli.js')}]`,
    'arg=[backup]',
    'arg=[a file with spaces]',
    'arg=[]',
    'arg=[--json]',
    'from stdin',
  ]);
});

test("the launcher keeps the caller's other tunables, and leaves a setting the caller made alone", async (t) => {
  const dir = await fakeNodeDir(t);
  const other = await run(DISKVAULT, [], envWith(dir, { GLIBC_TUNABLES: 'glibc.malloc.arena_max=2' }));
  t.regex(
    other.stdout,
    /^tunables=glibc\.malloc\.hugetlb=1:glibc\.malloc\.top_pad=67108864:glibc\.malloc\.arena_max=2$/m,
  );
  const optOut = await run(
    DISKVAULT,
    [],
    envWith(dir, { GLIBC_TUNABLES: 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0' }),
  );
  t.regex(
    optOut.stdout,
    /^tunables=glibc\.malloc\.top_pad=67108864:glibc\.malloc\.arena_max=2:glibc\.malloc\.hugetlb=0$/m,
  );
  const ownPad = await run(DISKVAULT, [], envWith(dir, { GLIBC_TUNABLES: 'glibc.malloc.top_pad=0' }));
  t.regex(ownPad.stdout, /^tunables=glibc\.malloc\.hugetlb=1:glibc\.malloc\.top_pad=0$/m);
});

test('the launcher finds dist/agent/cli.js when it is run through a symlink (as npm links bins)', async (t) => {
  const dir = await fakeNodeDir(t);
  const link = path.join(dir, 'diskvault');
  await symlink(DISKVAULT, link);
  const r = await run(link, ['stats'], envWith(dir));
  t.true(
    r.stdout.includes(`arg=[${path.resolve(path.dirname(DISKVAULT), '..', 'dist', 'agent', 'cli.js')}]`),
    r.stdout,
  );
});

test('the real command: usage errors exit 2', async (t) => {
  const bad = await run(DISKVAULT, ['no-such-command'], { ...process.env });
  t.is(bad.code, 2);
  t.regex(bad.stderr, /unknown command 'no-such-command'/);
  t.notRegex(bad.stderr, /\n\s+at /, 'no stack trace');
});

const onLinux = process.platform === 'linux';
(onLinux ? test : test.skip)(
  `a server started by the real command runs with the tunable${onLinux ? '' : ' (skipped: reads /proc, Linux only)'}`,
  async (t) => {
    const dataDir = await mkdtemp(path.join(os.tmpdir(), 'dv-launcher-srv-'));
    try {
      const srv = await spawnServer({ dataDir, env: { GLIBC_TUNABLES: '' } });
      try {
        // The server is node itself (the launcher execs), so its environment is the one the launcher built.
        // Only its first tunable can be checked here: glibc 2.36 parses the variable in place, and what
        // /proc shows after the first is cut off (the fake-node tests above check the whole value).
        const environ = (await readFile(`/proc/${srv.process.pid}/environ`, 'utf8')).split('\0');
        const tunables = environ.filter((e) => e.startsWith('GLIBC_TUNABLES='));
        t.is(tunables.length, 1);
        t.true(tunables[0].startsWith('GLIBC_TUNABLES=glibc.malloc.hugetlb=1'), tunables[0]);
        t.regex(await readFile(`/proc/${srv.process.pid}/cmdline`, 'utf8'), /dist\/agent\/cli\.js\0server\0/);
      } finally {
        t.is(await srv.kill('SIGTERM'), 0);
      }
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  },
);

test('the launcher says what to do when the build is missing, instead of a node stack trace', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'dv-launcher-unbuilt-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await mkdir(path.join(dir, 'agent'));
  const copy = path.join(dir, 'agent', 'diskvault');
  await copyFile(DISKVAULT, copy);
  await chmod(copy, 0o755);
  const r = await run(copy, ['--help'], { ...process.env });
  t.is(r.code, 1);
  t.regex(r.stderr, /dist\/agent\/cli\.js is missing: build it first \(npm ci && npm run build\)/);
});
