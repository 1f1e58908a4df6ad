import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { connect, createServer } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { backup, call, chunkOf, openSession } from '../helpers/api-client.js';
import { DISKVAULT } from '../helpers/diskvault-command.js';
import { spawnServer, startTestServer } from '../helpers/server.js';

function cli(
  args: string[],
  env: NodeJS.ProcessEnv = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(DISKVAULT, args, {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('exit', (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}

test('diskvault server starts on an empty folder, prints its URL, writes a 0600 admin token and stops on SIGTERM', async (t) => {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'dv-proc-'));
  try {
    const srv = await spawnServer({ dataDir });
    t.regex(srv.output().stdout, /dv_[0-9a-f]{16}_[0-9a-f]{64}/);
    t.is((await stat(path.join(dataDir, 'admin.token'))).mode & 0o777, 0o600);
    t.is((await call(srv.url, srv.adminToken, 'GET', '/v1/stats')).status, 200);
    // Tokens created by the CLI while the server runs are honoured at once; revoked ones refused at once.
    const made = await cli([
      'token',
      'create',
      '--role',
      'agent',
      '--host',
      'p1',
      '--data',
      dataDir,
      '--json',
    ]);
    t.is(made.code, 0, made.stderr);
    const { id, token } = JSON.parse(made.stdout);
    t.is((await backup(srv.url, token, 'p1', 'sda', [chunkOf('proc-1')])).snapshot.host, 'p1');
    const listed = await cli(['token', 'list', '--data', dataDir, '--json']);
    t.true(
      JSON.parse(listed.stdout).some(
        (x: { id: string; hash?: string }) => x.id === id && x.hash === undefined,
      ),
    );
    t.is((await cli(['token', 'revoke', id, '--data', dataDir])).code, 0);
    t.is((await call(srv.url, token, 'GET', '/v1/snapshots')).status, 401);
    t.is(await srv.kill('SIGTERM'), 0);
    // A second start keeps the tokens and prints no new admin token.
    const again = await spawnServer({ dataDir });
    t.notRegex(again.output().stdout, /created the first admin token/);
    t.is((await call(again.url, srv.adminToken, 'GET', '/v1/snapshots')).json.snapshots.length, 1);
    t.is(await again.kill('SIGINT'), 0);
  } finally {
    await rm(dataDir, { recursive: true, force: true });
  }
});

test('diskvault server on a port in use exits 1 with a clear message', async (t) => {
  const blocker = createServer();
  await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', () => r()));
  const port = (blocker.address() as { port: number }).port;
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'dv-proc-'));
  try {
    const r = await cli(['server', '--listen', `127.0.0.1:${port}`, '--data', dataDir]);
    t.is(r.code, 1);
    t.regex(r.stderr, /already in use/);
    t.notRegex(r.stderr, /\n\s+at /);
  } finally {
    blocker.close();
    await rm(dataDir, { recursive: true, force: true });
  }
});

test('diskvault server refuses bad flags with usage exit code 2', async (t) => {
  const r = await cli(['server', '--cache-size', 'lots']);
  t.is(r.code, 2);
  t.regex(r.stderr, /invalid size/);
  t.is((await cli(['server', '--s3-region', 'eu'])).code, 2);
});

test('the admin CLI runs forget, gc, verify and stats over HTTP', async (t) => {
  const srv = await startTestServer();
  try {
    const agent = await srv.makeToken('agent', ['cli1']);
    for (let i = 0; i < 3; i++) await backup(srv.url, agent, 'cli1', 'sda', [chunkOf(`cli-${i}`)]);
    const env = {
      DISKVAULT_SERVER: srv.url,
      DISKVAULT_TOKEN: srv.adminToken,
      DISKVAULT_CONFIG: '/nonexistent/agent.json',
    };
    const dry = await cli(['forget', '--keep-last', '1', '--host', 'cli1', '--dry-run', '--json'], env);
    t.is(dry.code, 0, dry.stderr);
    const plan = JSON.parse(dry.stdout);
    t.is(plan.plan.groups[0].keep.length, 1);
    t.is(plan.plan.groups[0].remove.length, 2);
    t.true(plan.dryRun);
    const human = await cli(['forget', '--keep-last', '2', '--prune'], env);
    t.is(human.code, 0, human.stderr);
    t.regex(human.stdout, /removed 1 snapshots/);
    t.regex(human.stdout, /gc: deleted \d+ chunks/);
    t.is((await cli(['forget'], env)).code, 2);
    const gc = await cli(['gc', '--json'], env);
    t.is(gc.code, 0, gc.stderr);
    t.is(typeof JSON.parse(gc.stdout).chunksDeleted, 'number');
    const verify = await cli(['verify', '--read-data'], env);
    t.is(verify.code, 0, verify.stderr);
    t.regex(verify.stdout, /no problems found/);
    const verifyJson = await cli(['verify', '--read-data', '--json'], env);
    t.is(verifyJson.code, 0, verifyJson.stderr);
    t.true(JSON.parse(verifyJson.stdout).ok);
    const progress = verifyJson.stderr
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l));
    t.true(progress.length > 0, 'verify --json reports progress on stderr');
    for (const p of progress) {
      t.is(p.type, 'progress');
      t.is(typeof p.phase, 'string');
      t.true(p.done <= p.total);
    }
    const stats = await cli(['stats', '--json'], env);
    t.is(JSON.parse(stats.stdout).snapshots, 2);
    // An agent token is refused with a one-line message and exit 1.
    const refused = await cli(['gc'], { ...env, DISKVAULT_TOKEN: agent });
    t.is(refused.code, 1);
    t.regex(refused.stderr, /global admin/);
  } finally {
    await srv.stop();
  }
});

test('the release is named alike by --version, the server, /metrics and the agent requests', async (t) => {
  const { version } = JSON.parse(
    await readFile(new URL('../../../package.json', import.meta.url), 'utf8'),
  ) as { version: string };
  t.regex(version, /^\d+\.\d+\.\d+/);
  for (const flag of ['--version', '-V', 'version']) {
    const out = await cli([flag]);
    t.is(out.code, 0, out.stderr);
    t.is(out.stdout, `diskvault ${version}\n`);
  }
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'dv-version-'));
  try {
    const srv = await spawnServer({ dataDir });
    try {
      t.true(srv.output().stdout.includes(`diskvault ${version} server listening on ${srv.url}`));
      const metrics = await call(srv.url, srv.adminToken, 'GET', '/metrics');
      t.true(
        metrics.bytes
          .toString()
          .includes(`diskvault_build_info{version="${version}",node="${process.version}"} 1`),
      );
      const listed = await cli(['snapshots', '--server', srv.url, '--token', srv.adminToken, '--json']);
      t.is(listed.code, 0, listed.stderr);
      // The request log tells an admin which agents still run an old release.
      const agentLine = srv
        .output()
        .stderr.split('\n')
        .find((l) => l.includes('"route":"/v1/snapshots"'));
      t.truthy(agentLine, srv.output().stderr);
      t.is(JSON.parse(agentLine!).agent, `diskvault/${version} node/${process.versions.node}`);
    } finally {
      await srv.kill('SIGTERM');
    }
  } finally {
    await rm(dataDir, { recursive: true, force: true });
  }
});

test('a connection whose body stalls is closed after the idle timeout', async (t) => {
  const srv = await startTestServer({ idleTimeoutMs: 2000 });
  try {
    const agent = await srv.makeToken('agent', ['idle1']);
    const session = await openSession(srv.url, agent, 'idle1');
    const u = new URL(srv.url);
    const started = Date.now();
    await new Promise<void>((resolve, reject) => {
      const sock = connect(Number(u.port), u.hostname, () => {
        sock.write(
          `PUT /v1/chunks/${chunkOf('idle').id}?session=${session} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${agent}\r\nContent-Length: 1000\r\n\r\n0123456789`,
        );
      });
      sock.on('error', () => {});
      sock.on('close', () => resolve());
      setTimeout(() => reject(new Error('socket still open after 10 s')), 10_000).unref();
    });
    t.true(Date.now() - started < 10_000);
  } finally {
    await srv.stop();
  }
});
