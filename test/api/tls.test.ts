import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { copyFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { type CliRun, runCli, sha256File } from '../helpers/backup-e2e.js';
import { pollUntil } from '../helpers/poll.js';
import { hasStackTrace } from '../helpers/reliability-harness.js';
import { type SpawnedServer, spawnServer, startTestServer } from '../helpers/server.js';

// The server on HTTPS with certificates from a private CA made by openssl, and the real agent trusting it
// through --cacert, DISKVAULT_CACERT or the config file; a renewed certificate is picked up on SIGHUP.

/** Runs openssl in `dir` with the arguments of a space-separated command line. */
const openssl = (dir: string, line: string) =>
  execFileSync('openssl', line.split(' '), { cwd: dir, stdio: 'pipe' });
const EC_KEY = '-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes';

/** A self-signed CA: `<ca>.pem` and `<ca>.key`. */
function makeCa(dir: string, ca: string): void {
  openssl(dir, `req -x509 ${EC_KEY} -keyout ${ca}.key -out ${ca}.pem -days 2 -subj /CN=test-${ca}`);
}

/** A server certificate `<name>.pem` (key `<name>.key`) signed by `ca`, for the names in `altNames`. */
async function makeServerCert(dir: string, ca: string, name: string, altNames: string): Promise<void> {
  openssl(dir, `req ${EC_KEY} -keyout ${name}.key -out ${name}.csr -subj /CN=${name}`);
  await writeFile(join(dir, `${name}.ext`), `subjectAltName=${altNames}\n`);
  openssl(
    dir,
    `x509 -req -in ${name}.csr -CA ${ca}.pem -CAkey ${ca}.key -CAcreateserial -days 2 -out ${name}.pem -extfile ${name}.ext`,
  );
}

/** A certificate signed by `ca` that expired in 2020 (`openssl ca` is the tool that takes explicit dates). */
async function makeExpiredCert(dir: string, ca: string, name: string): Promise<void> {
  openssl(dir, `req ${EC_KEY} -keyout ${name}.key -out ${name}.csr -subj /CN=${name}`);
  await writeFile(join(dir, 'index.txt'), '');
  await writeFile(join(dir, 'serial'), '01\n');
  await writeFile(
    join(dir, 'ca.cnf'),
    [
      '[ca]',
      'default_ca = test',
      '[test]',
      'database = index.txt',
      'new_certs_dir = .',
      `certificate = ${ca}.pem`,
      `private_key = ${ca}.key`,
      'serial = serial',
      'default_md = sha256',
      'policy = any',
      'x509_extensions = ext',
      '[any]',
      'commonName = supplied',
      '[ext]',
      'subjectAltName = IP:127.0.0.1',
      '',
    ].join('\n'),
  );
  openssl(
    dir,
    `ca -batch -config ca.cnf -startdate 20200101000000Z -enddate 20200102000000Z -in ${name}.csr -out ${name}.pem`,
  );
}

/** A server on `<name>.pem` and `<name>.key`, and `diskvault snapshots ARGS` run against it (or against `url`). */
async function withTlsServer(
  dir: string,
  name: string,
  fn: (server: SpawnedServer, snapshots: (args: string[], url?: string) => Promise<CliRun>) => Promise<void>,
): Promise<void> {
  const server = await spawnServer({
    dataDir: join(dir, `data-${name}`),
    args: ['--tls-cert', join(dir, `${name}.pem`), '--tls-key', join(dir, `${name}.key`)],
  });
  try {
    await fn(server, (args, url = server.url) =>
      runCli(['snapshots', ...args], { DISKVAULT_SERVER: url, DISKVAULT_TOKEN: server.adminToken }),
    );
  } finally {
    await server.kill();
  }
}

async function waitFor(check: () => boolean, what: string, ms = 10_000): Promise<void> {
  const until = Date.now() + ms;
  while (!check()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('an HTTPS server is reached through --cacert, DISKVAULT_CACERT or the config file, and SIGHUP reloads its certificate', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'dv-tls-'));
  try {
    makeCa(dir, 'ca1');
    makeCa(dir, 'ca2');
    await makeServerCert(dir, 'ca1', 'first', 'IP:127.0.0.1,DNS:localhost');
    await makeServerCert(dir, 'ca2', 'second', 'IP:127.0.0.1,DNS:localhost');
    const cert = join(dir, 'live.pem');
    const key = join(dir, 'live.key');
    await copyFile(join(dir, 'first.pem'), cert);
    await copyFile(join(dir, 'first.key'), key);
    const server = await spawnServer({
      dataDir: join(dir, 'data'),
      args: ['--tls-cert', cert, '--tls-key', key],
    });
    try {
      t.regex(server.url, /^https:\/\/127\.0\.0\.1:\d+$/);
      // The line follows the listening line, and may arrive through the pipe after it.
      const stdout = await pollUntil(
        () => server.output().stdout,
        (out) => out.includes('TLS certificate:'),
        'the TLS certificate line',
        { timeoutMs: 10_000 },
      );
      t.regex(stdout, /TLS certificate: IP Address:127\.0\.0\.1, DNS:localhost, valid until 20/);
      const env = { DISKVAULT_SERVER: server.url, DISKVAULT_TOKEN: server.adminToken };
      const ca1 = join(dir, 'ca1.pem');
      const ca2 = join(dir, 'ca2.pem');

      const untrusted = await runCli(['snapshots'], env);
      t.is(untrusted.code, 1);
      t.regex(
        untrusted.stderr,
        /presented a TLS certificate this agent does not trust \(\w+\): .*--cacert FILE/,
      );
      t.false(hasStackTrace(untrusted.stderr));

      const image = join(dir, 'disk.img');
      await writeFile(image, randomBytes(3 * 1024 * 1024));
      const backup = await runCli(
        ['backup', image, '--host', 'web1', '--disk', 'sda', '--json', '--cacert', ca1],
        env,
      );
      t.is(backup.code, 0, backup.stderr);
      const restored = join(dir, 'restored.img');
      const restore = await runCli(['restore', backup.summary!.snapshot, restored], {
        ...env,
        DISKVAULT_CACERT: ca1,
      });
      t.is(restore.code, 0, restore.stderr);
      t.is(await sha256File(restored), await sha256File(image));
      const config = join(dir, 'agent.json');
      await writeFile(config, JSON.stringify({ cacert: [ca1] }));
      const stats = await runCli(['stats', '--json', '--config', config], env);
      t.is(stats.code, 0, stats.stderr);
      t.is(JSON.parse(stats.stdout).snapshots, 1);

      // Renewed by another CA: after SIGHUP, new connections get the new certificate.
      await copyFile(join(dir, 'second.pem'), cert);
      await copyFile(join(dir, 'second.key'), key);
      server.process.kill('SIGHUP');
      await waitFor(() => /TLS certificate reloaded/.test(server.output().stderr), 'the reload');
      const oldCa = await runCli(['snapshots', '--cacert', ca1], env);
      t.is(oldCa.code, 1);
      t.regex(oldCa.stderr, /does not trust/);
      const both = await runCli(['snapshots', '--json', '--cacert', ca1, '--cacert', ca2], env);
      t.is(both.code, 0, both.stderr);
      t.is(JSON.parse(both.stdout).length, 1);

      // A key that does not fit is refused on reload, and the certificate in use stays.
      await copyFile(join(dir, 'first.key'), key);
      server.process.kill('SIGHUP');
      await waitFor(
        () => /still serving the previous certificate/.test(server.output().stderr),
        'the refusal',
      );
      t.regex(server.output().stderr, /does not fit the certificate/);
      const still = await runCli(['snapshots', '--cacert', ca2], env);
      t.is(still.code, 0, still.stderr);
      t.is(server.process.exitCode, null, 'the server is still running');
    } finally {
      await server.kill();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('TLS mistakes are one clear sentence each: wrong name, expired, http against https either way, a key that does not fit, not a certificate', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'dv-tls-'));
  try {
    makeCa(dir, 'ca');
    await makeServerCert(dir, 'ca', 'other', 'DNS:vault.example.net');
    await makeServerCert(dir, 'ca', 'local', 'IP:127.0.0.1');
    const ca = join(dir, 'ca.pem');

    await withTlsServer(dir, 'other', async (server, snapshots) => {
      const r = await snapshots(['--cacert', ca]);
      t.is(r.code, 1);
      t.regex(
        r.stderr,
        /presented a TLS certificate for another name \(it lists DNS:vault\.example\.net, not 127\.0\.0\.1\)/,
      );
      t.false(hasStackTrace(r.stderr));
      // Plain http to the TLS port: the server cuts the connection (after the agent's retries, ~15 s).
      const plainToTls = await snapshots([], server.url.replace('https:', 'http:'));
      t.is(plainToTls.code, 1);
      t.regex(plainToTls.stderr, /ECONNRESET \(if the server serves TLS, use https:\/\/\)/);
    });

    await makeExpiredCert(dir, 'ca', 'expired');
    await withTlsServer(dir, 'expired', async (server, snapshots) => {
      // stderr is its own pipe: the warning may arrive after the listening line on stdout.
      await waitFor(
        () =>
          /warning: the TLS certificate expired on 2020-01-02T00:00:00\.000Z/.test(server.output().stderr),
        'the expiry warning',
      );
      const r = await snapshots(['--cacert', ca]);
      t.is(r.code, 1);
      t.regex(
        r.stderr,
        /presented a TLS certificate that is expired: renew it on the server, then 'systemctl reload/,
      );
    });

    const plain = await startTestServer({ storage: 'local' });
    try {
      const r = await runCli(['snapshots'], {
        DISKVAULT_SERVER: plain.url.replace('http:', 'https:'),
        DISKVAULT_TOKEN: plain.adminToken,
      });
      t.is(r.code, 1);
      t.regex(
        r.stderr,
        /cannot speak TLS with the server at https:\/\/127\.0\.0\.1:\d+: it answered something that is not TLS \(wrong version number\); is it serving plain http\?/,
      );
    } finally {
      await plain.stop();
    }

    const tlsFlags = ['--tls-cert', join(dir, 'local.pem'), '--tls-key', join(dir, 'other.key')];
    const mismatched = await runCli(
      ['server', '--listen', '127.0.0.1:0', '--data', join(dir, 'data2'), ...tlsFlags],
      {},
    );
    t.is(mismatched.code, 1);
    t.regex(mismatched.stderr, /the TLS key .*other\.key does not fit the certificate .*local\.pem/);
    t.false(hasStackTrace(mismatched.stderr));

    const notCa = await runCli(['snapshots', '--cacert', join(dir, 'local.key')], {
      DISKVAULT_SERVER: 'https://127.0.0.1:1',
      DISKVAULT_TOKEN: 'x',
    });
    t.is(notCa.code, 2);
    t.regex(notCa.stderr, /local\.key holds no PEM certificate/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
