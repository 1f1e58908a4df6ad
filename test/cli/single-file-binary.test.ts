import { type ChildProcess, spawn } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { curl, execFileP, imageFixture, makeImage, sha256 } from '../helpers/image-fixture.js';
import { BINARY, ensureBinary } from '../helpers/single-file-binary.js';

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the copied binary as `env -i ./diskvault ARGS` in its folder: no PATH, no HOME, no node anywhere. */
function runBare(dir: string, args: string[], env: string[] = []): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn('/usr/bin/env', ['-i', ...env, './diskvault', ...args], {
      cwd: dir,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

test('dist/diskvault-linux-x64, alone in an empty folder under env -i, runs snapshots, restore, backup and nbd', async (t) => {
  const { buildSeconds } = await ensureBinary();
  t.log(
    buildSeconds > 0
      ? `built the binary in ${buildSeconds.toFixed(1)} s`
      : 'reused the binary built from these inputs',
  );
  const f = await imageFixture();
  t.teardown(() => f.close());
  const dir = await mkdtemp(join(tmpdir(), 'dv-bare-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await copyFile(BINARY, join(dir, 'diskvault'));
  await execFileP('chmod', ['755', join(dir, 'diskvault')]);
  const conn = ['--server', f.server.url, '--token', f.server.adminToken];

  const version = await runBare(dir, ['--version']);
  t.is(version.code, 0, version.stderr);
  t.regex(version.stdout, /^diskvault \d+\.\d+\.\d+\n$/);

  const listed = await runBare(dir, ['snapshots', '--json', ...conn]);
  t.is(listed.code, 0, listed.stderr);
  t.deepEqual(
    (JSON.parse(listed.stdout) as { id: string }[]).map((s) => s.id),
    [f.snapshot],
  );

  // A private temp folder for the unpacked addons, gone once the command exits.
  await mkdir(join(dir, 'tmp'));
  const restored = await runBare(
    dir,
    ['restore', f.snapshot.slice(0, 12), 'restored.img', ...conn],
    [`TMPDIR=${join(dir, 'tmp')}`],
  );
  t.is(restored.code, 0, restored.stderr);
  t.true((await readFile(join(dir, 'restored.img'))).equals(f.image));
  t.deepEqual(await readdir(join(dir, 'tmp')), []);

  const second = makeImage();
  await writeFile(join(dir, 'second.img'), second);
  const backup = await runBare(dir, [
    'backup',
    'second.img',
    '--host',
    'rescue',
    '--disk',
    'vda',
    '--json',
    ...conn,
  ]);
  t.is(backup.code, 0, backup.stderr);
  const summary = JSON.parse(backup.stdout.trim().split('\n').pop() as string) as {
    snapshot: string;
    sha256: string;
  };
  t.is(summary.sha256, sha256(second));
  const back = await runBare(dir, ['restore', summary.snapshot, 'second-back.img', ...conn]);
  t.is(back.code, 0, back.stderr);
  t.true((await readFile(join(dir, 'second-back.img'))).equals(second));

  // nbd: served by the binary, read by qemu-img.
  const port = 20000 + Math.floor(Math.random() * 20000);
  const nbd: ChildProcess = spawn(
    '/usr/bin/env',
    ['-i', './diskvault', 'nbd', f.snapshot, '--listen', `127.0.0.1:${port}`, ...conn],
    { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  t.teardown(() => nbd.kill('SIGKILL'));
  let said = '';
  nbd.stdout?.setEncoding('utf8').on('data', (d: string) => (said += d));
  nbd.stderr?.setEncoding('utf8').on('data', (d: string) => (said += d));
  const deadline = Date.now() + 30_000;
  while (!/listening|serving/i.test(said) && Date.now() < deadline)
    await new Promise((r) => setTimeout(r, 50));
  t.regex(said, /listening|serving/i);
  const viaNbd = join(dir, 'nbd.img');
  await execFileP('qemu-img', [
    'convert',
    '-f',
    'raw',
    '-O',
    'raw',
    `nbd://127.0.0.1:${port}/${f.snapshot}`,
    viaNbd,
  ]);
  t.true((await readFile(viaNbd)).equals(f.image));
});

test('the server offers the binary of its own build for download, without a token', async (t) => {
  await ensureBinary();
  const f = await imageFixture();
  t.teardown(() => f.close());
  const url = `${f.server.url}/v1/client/diskvault-linux-x64`;
  const head = await fetch(url, { method: 'HEAD' });
  t.is(head.status, 200);
  const file = await readFile(BINARY);
  t.is(head.headers.get('content-length'), String(file.length));
  t.is(head.headers.get('x-diskvault-sha256'), sha256(file));
  const out = join(f.dir, 'diskvault');
  const got = await curl(['-f', '-o', out, url]);
  t.is(got.code, 0, got.stderr);
  t.is(sha256(await readFile(out)), sha256(file));
});
