import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { parseRate, RateLimiter } from '../../agent/rate-limit.js';
import { runCli, sha256File } from '../helpers/backup-e2e.js';
import { downloadsLoggedSince } from '../helpers/download-logs.js';
import { spawnServer, startTestServer, type TestServer } from '../helpers/server.js';

// --limit-upload / --limit-download through the real CLI and a real server. Only lower bounds on time are
// asserted: a limit can be proven by what could not have gone faster, never by how fast a loaded machine is.

const MiB = 1024 * 1024;
/** The most the paced fetch stream reads from its socket at once (PACED_READ_BYTES). */
const SOCKET_READ_BYTES = 64 * 1024;

/**
 * A real server, an agent token for host1, and a scratch folder holding `disk.img` of random bytes (zstd
 * cannot shrink them, so what crosses the wire is about the image itself).
 */
async function withRepository(
  imageBytes: number,
  fn: (ctx: { env: Record<string, string>; dir: string; image: string; server: TestServer }) => Promise<void>,
): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'dv-limit-'));
  const server = await startTestServer({ storage: 'local' });
  try {
    const env = { DISKVAULT_SERVER: server.url, DISKVAULT_TOKEN: await server.makeToken('agent', ['host1']) };
    const image = join(dir, 'disk.img');
    await writeFile(image, randomBytes(imageBytes));
    await fn({ env, dir, image, server });
  } finally {
    await server.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

test('a rate is KiB/s as a plain number (restic), bytes per second with a unit, and 0 means none', (t) => {
  t.is(parseRate('2048'), 2 * MiB);
  t.is(parseRate('500K'), 500 * 1024);
  t.is(parseRate('20M'), 20 * MiB);
  t.is(parseRate('1.5MiB/s'), 1.5 * MiB);
  t.is(parseRate('1g'), 1024 * MiB);
  t.is(parseRate('0'), null);
  for (const bad of ['fast', '-5', '20 Mbit', '', '1e3'])
    t.throws(() => parseRate(bad), { instanceOf: RangeError });
});

test('the limiter lets no more than its burst plus the rate through, however many take at once', async (t) => {
  const rate = 1 * MiB;
  const limiter = new RateLimiter(rate);
  const started = performance.now();
  const piece = 64 * 1024;
  // Eight takers at once, as eight uploads in flight, 2 MiB in all.
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      for (let i = 0; i < 4; i++) await limiter.take(piece);
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  // No slack for timers: the limiter sleeps again when one fires early, so no byte goes over the limit.
  t.true(seconds >= (2 * MiB - limiter.burst) / rate, `2 MiB at 1 MiB/s took ${seconds} s`);
});

test('backup --limit-upload and restore --limit-download keep to their rates, and the restore is exact', async (t) => {
  await withRepository(6 * MiB, async ({ env, dir, image, server }) => {
    const rate = 2 * MiB;
    const burst = new RateLimiter(rate).burst;

    const backup = await runCli(
      ['backup', image, '--host', 'host1', '--disk', 'sda', '--json', '--limit-upload', '2M'],
      env,
    );
    t.is(backup.code, 0, backup.stderr);
    const up = backup.summary as NonNullable<typeof backup.summary> & { seconds: number };
    t.true(up.bytesUploaded >= 6 * MiB, 'the whole image was uploaded');
    t.true(
      up.seconds >= (up.bytesUploaded - burst) / rate,
      `${up.bytesUploaded} bytes uploaded in ${up.seconds} s at a 2 MiB/s limit`,
    );

    // The download limit from the config file, as a nightly unit would carry it (a number: KiB/s).
    const config = join(dir, 'agent.json');
    await writeFile(config, JSON.stringify({ limitDownload: 2048 }));
    const target = join(dir, 'restored.img');
    const logsBefore = server.logs.length;
    const restore = await runCli(['restore', up.snapshot, target, '--json', '--config', config], env);
    t.is(restore.code, 0, restore.stderr);
    const down = restore.summary as unknown as {
      bytesFetched: number;
      chunksFetched: number;
      seconds: number;
      verified: boolean;
    };
    t.true(down.verified);
    t.is(await sha256File(target), await sha256File(image));
    // The fetch stream pays for each piece as it is received (the bytes have crossed the link by then) and
    // holds the socket back until paid: the last piece read, at most the 64 KiB a paced stream reads at
    // once, is used before its wait.
    t.true(
      down.seconds >= (down.bytesFetched - burst - SOCKET_READ_BYTES) / rate,
      `${down.bytesFetched} bytes fetched in ${down.seconds} s at a 2 MiB/s limit`,
    );
    // The limit paces the fetch stream itself: the chunks still came over it, none as its own GET.
    const { streams, gets } = await downloadsLoggedSince(server, logsBefore);
    t.is(streams.length, 1, JSON.stringify(streams));
    t.is(streams[0]!.chunks, down.chunksFetched);
    t.is(gets.length, 0, gets.join('\n'));
  });
});

test('restore --limit-download keeps to its rate over HTTPS too', async (t) => {
  // Over TLS node may hand the fetch stream more decrypted pieces after it paused its socket to pay for one:
  // every piece must be paid for before reading goes on.
  const dir = await mkdtemp(join(tmpdir(), 'dv-limit-tls-'));
  try {
    const [key, cert] = [join(dir, 'key.pem'), join(dir, 'cert.pem')];
    const args = 'req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost';
    execFileSync(
      'openssl',
      [...args.split(' '), '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', key, '-out', cert],
      { stdio: 'ignore' },
    );
    const server = await spawnServer({
      dataDir: join(dir, 'data'),
      args: ['--tls-cert', cert, '--tls-key', key],
    });
    try {
      const env = {
        DISKVAULT_SERVER: server.url,
        DISKVAULT_TOKEN: server.adminToken,
        DISKVAULT_CACERT: cert,
      };
      const image = join(dir, 'disk.img');
      await writeFile(image, randomBytes(6 * MiB));
      const backup = await runCli(['backup', image, '--host', 'host1', '--disk', 'sda', '--json'], env);
      t.is(backup.code, 0, backup.stderr);
      const rate = 2 * MiB;
      const burst = new RateLimiter(rate).burst;
      const logged = {
        get logs() {
          return server.output().stderr.split('\n');
        },
      };
      const logsBefore = logged.logs.length;
      const target = join(dir, 'restored.img');
      const restore = await runCli(
        ['restore', 'latest', target, '--host', 'host1', '--disk', 'sda', '--json', '--limit-download', '2M'],
        env,
      );
      t.is(restore.code, 0, restore.stderr);
      const down = restore.summary as unknown as {
        bytesFetched: number;
        chunksFetched: number;
        seconds: number;
      };
      t.is(await sha256File(target), await sha256File(image));
      t.true(
        down.seconds >= (down.bytesFetched - burst - SOCKET_READ_BYTES) / rate,
        `${down.bytesFetched} bytes fetched over HTTPS in ${down.seconds} s at a 2 MiB/s limit`,
      );
      const { streams, gets } = await downloadsLoggedSince(logged, logsBefore);
      t.is(streams[0]?.chunks, down.chunksFetched, 'the chunks came over the fetch stream');
      t.is(gets.length, 0, gets.join('\n'));
    } finally {
      await server.kill();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a malformed limit is a usage error before anything is sent, from a flag or from the config file', async (t) => {
  await withRepository(MiB, async ({ env, dir, image }) => {
    const flag = await runCli(
      ['backup', image, '--host', 'host1', '--disk', 'sda', '--limit-upload', 'fast'],
      env,
    );
    t.is(flag.code, 2);
    t.regex(flag.stderr, /--limit-upload: invalid rate 'fast'/);
    const config = join(dir, 'agent.json');
    await writeFile(config, JSON.stringify({ limitUpload: '10 Mbit' }));
    const fromFile = await runCli(
      ['backup', image, '--host', 'host1', '--disk', 'sda', '--config', config],
      env,
    );
    t.is(fromFile.code, 2);
    t.regex(fromFile.stderr, /"limitUpload" in .*agent\.json: invalid rate '10 Mbit'/);
    await writeFile(config, JSON.stringify({ limitUpload: true }));
    const wrongType = await runCli(
      ['backup', image, '--host', 'host1', '--disk', 'sda', '--config', config],
      env,
    );
    t.is(wrongType.code, 2);
    t.regex(
      wrongType.stderr,
      /"limitUpload" in .*agent\.json must be a string like "20M" or a number of KiB\/s/,
    );
    for (const run of [flag, fromFile, wrongType]) t.notRegex(run.stderr, /\n\s+at /, 'no stack trace');
    const snapshots = await runCli(['snapshots', '--json'], env);
    t.deepEqual(JSON.parse(snapshots.stdout), [], 'nothing was committed');
  });
});
