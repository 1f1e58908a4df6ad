import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { createToken } from '../../api/token-store.js';
import { runCli } from '../helpers/backup-e2e.js';
import { type SpawnedServer, spawnServer } from '../helpers/server.js';

// Plain http beyond loopback hands bearer tokens to anyone on the path: the server says so when it starts
// listening that way, and the agent when it sends a token that way, once per run.

/** An address of this machine that is not loopback (0.0.0.0 reaches this machine too, where there is none). */
function networkAddress(): string {
  for (const list of Object.values(os.networkInterfaces()))
    for (const a of list ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  return '0.0.0.0';
}

const warnLines = (srv: SpawnedServer) =>
  srv
    .output()
    .stderr.split('\n')
    .filter((l) => l.startsWith('{') && JSON.parse(l).level === 'warn')
    .map((l) => JSON.parse(l).msg as string);

test('a server on a non-loopback address without TLS warns at start, and the agent warns once when it sends its token there', async (t) => {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'dv-plain-'));
  const work = await mkdtemp(path.join(os.tmpdir(), 'dv-plain-img-'));
  let srv: SpawnedServer | undefined;
  try {
    // On loopback: no warning.
    srv = await spawnServer({ dataDir });
    t.deepEqual(warnLines(srv), []);
    t.is(await srv.kill('SIGTERM'), 0);

    srv = await spawnServer({ dataDir, args: ['--listen', '0.0.0.0:0'] });
    const port = new URL(srv.url).port;
    t.deepEqual(warnLines(srv), [
      `listening on http://0.0.0.0:${port} without TLS: tokens and backups cross the network readable by anyone on the path; give --tls-cert and --tls-key, or listen on 127.0.0.1 behind a TLS proxy`,
    ]);

    const { token } = await createToken(dataDir, { role: 'agent', hosts: ['h1'] });
    const remote = `http://${networkAddress()}:${port}`;
    const expected = `the token is sent over plain http to ${networkAddress()}:${port}, which is not this machine: anyone on the network path can read and use it; use https (docs/security.md, "Transport")`;
    const image = path.join(work, 'disk.img');
    await writeFile(image, randomBytes(3 * 1024 * 1024));

    // A backup makes many requests; the warning comes once, as a JSON line with --json.
    const json = await runCli(['backup', image, '--host', 'h1', '--disk', 'sda', '--json'], {
      DISKVAULT_SERVER: remote,
      DISKVAULT_TOKEN: token,
    });
    t.is(json.code, 0, json.stderr);
    const warnings = json.stderr
      .split('\n')
      .filter((l) => l.includes('"type":"warning"'))
      .map((l) => JSON.parse(l));
    t.deepEqual(warnings, [{ type: 'warning', code: 'PlainHttp', message: expected }]);

    const human = await runCli(['snapshots'], { DISKVAULT_SERVER: remote, DISKVAULT_TOKEN: token });
    t.is(human.code, 0, human.stderr);
    t.is(human.stderr, `diskvault snapshots: warning: ${expected}\n`);

    // An admin command warns the same way.
    const { token: admin } = await createToken(dataDir, { role: 'admin' });
    const protect = await runCli(['protect', 'latest', '--host', 'h1', '--disk', 'sda'], {
      DISKVAULT_SERVER: remote,
      DISKVAULT_TOKEN: admin,
    });
    t.is(protect.code, 0, protect.stderr);
    t.is(protect.stderr, `diskvault protect: warning: ${expected}\n`);

    // The same server through loopback: nothing to warn about.
    const local = await runCli(['snapshots'], {
      DISKVAULT_SERVER: `http://127.0.0.1:${port}`,
      DISKVAULT_TOKEN: token,
    });
    t.is(local.code, 0, local.stderr);
    t.is(local.stderr, '');
  } finally {
    await srv?.kill('SIGTERM');
    await rm(dataDir, { recursive: true, force: true });
    await rm(work, { recursive: true, force: true });
  }
});
