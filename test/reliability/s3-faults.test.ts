import path from 'node:path';
import test from 'ava';
import { type RunningService, startService } from '../../api/service.js';
import { openStorage } from '../../storage-adapters/index.js';
import { type FakeS3, startFakeS3 } from '../helpers/fake-s3.js';
import {
  backupCli,
  type Conn,
  hasStackTrace,
  listSnapshotsCli,
  removeDir,
  restoreCli,
  summaryOf,
  tempDir,
  verifyCli,
} from '../helpers/reliability-harness.js';
import { writeImage } from '../helpers/reliability-images.js';
import { type S3Proxy, startS3Proxy } from '../helpers/reliability-s3-proxy.js';
import { TEST_CHUNKER } from '../helpers/server.js';

/**
 * S3 misbehaving under a running server: errors that pass are retried away, errors that last fail the
 * backup with a clear message within bounded time, and never is a snapshot committed that names a chunk
 * S3 did not store (verify --read-data after every case, with S3 healthy again).
 */
let dir: string;
let s3: FakeS3;
let proxy: S3Proxy;
let service: RunningService;
let conn: Conn;
const images: Record<string, { path: string; sha256: string }> = {};

test.before(async () => {
  dir = await tempDir('s3-faults');
  await Promise.all(
    ['sierra', 'tango', 'uniform', 'victor', 'whiskey'].map(async (seed) => {
      const p = path.join(dir, `${seed}.img`);
      images[seed] = { path: p, sha256: await writeImage(p, { seed, sizeMiB: 10 }) };
    }),
  );
  s3 = await startFakeS3();
  proxy = await startS3Proxy(s3.endpoint);
  const storage = await openStorage({
    kind: 's3',
    endpoint: proxy.endpoint,
    region: s3.region,
    bucket: s3.bucket,
    forcePathStyle: true,
    credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
  });
  service = await startService({
    host: '127.0.0.1',
    port: 0,
    dataDir: path.join(dir, 'data'),
    storage,
    chunker: TEST_CHUNKER,
    log: () => {},
  });
  conn = { server: service.url, token: service.createdAdminToken! };
});

test.after.always(async () => {
  await proxy?.setMode({ kind: 'pass' });
  await service?.stop(500);
  await proxy?.close();
  await s3?.stop();
  if (dir) await removeDir(dir);
});

/** With S3 healthy: every chunk of every snapshot is stored and hashes right. */
async function assertNothingDangling(t: import('ava').ExecutionContext): Promise<void> {
  await proxy.setMode({ kind: 'pass' });
  const v = await verifyCli(conn);
  t.true(v.report.ok, JSON.stringify(v.report));
}

test.serial('S3 answering a few 500s: the server retries and the backup succeeds bit-exact', async (t) => {
  await proxy.setMode({ kind: 'fail', count: 4, methods: ['PUT'] });
  const r = await backupCli(conn, images.sierra.path, 'sierra', 'sda');
  t.is(r.code, 0, r.stderr);
  t.is(proxy.injected, 4, 'the injected errors were hit');
  await proxy.setMode({ kind: 'pass' });
  t.is(await restoreCli(conn, summaryOf(r).snapshot, path.join(dir, 'sierra.out')), images.sierra.sha256);
  await assertNothingDangling(t);
});

test.serial('S3 answering slowly: the backup succeeds, only slower', async (t) => {
  await proxy.setMode({ kind: 'delay', ms: 150 });
  const r = await backupCli(conn, images.tango.path, 'tango', 'sda');
  t.is(r.code, 0, r.stderr);
  await proxy.setMode({ kind: 'pass' });
  t.is(await restoreCli(conn, summaryOf(r).snapshot, path.join(dir, 'tango.out')), images.tango.sha256);
});

test.serial(
  'S3 answering 500 to every write: the backup fails with a clear message within bounded time and commits nothing',
  async (t) => {
    await proxy.setMode({ kind: 'fail', methods: ['PUT', 'POST'] });
    proxy.resetCounts();
    const started = Date.now();
    const r = await backupCli(conn, images.uniform.path, 'uniform', 'sda', [], { timeoutMs: 120_000 });
    const seconds = (Date.now() - started) / 1000;
    t.is(r.code, 1, r.stdout);
    t.regex(r.stderr, /S3|unavailable|503|storage/i);
    t.false(hasStackTrace(r.stderr), r.stderr);
    t.true(seconds < 90, `gave up after ${seconds} s`);
    t.log(`gave up after ${seconds.toFixed(1)} s and ${proxy.injected} refused S3 writes`);
    t.false((await listSnapshotsCli(conn)).some((s) => s.host === 'uniform'));
    await assertNothingDangling(t);
    const again = await backupCli(conn, images.uniform.path, 'uniform', 'sda');
    t.is(again.code, 0, again.stderr);
  },
);

test.serial(
  'S3 stopping mid-backup: the backup fails clearly, commits nothing, and succeeds once S3 is back',
  async (t) => {
    // S3 stops after five writes, whatever the speed of the machine: the image has over a hundred chunks.
    await proxy.setMode({ kind: 'stop-after', writes: 5 });
    const r = await backupCli(conn, images.victor.path, 'victor', 'sda', ['--concurrency', '2'], {
      timeoutMs: 120_000,
    });
    t.true(proxy.stopped, 'S3 went away during uploads');
    t.is(r.code, 1, r.stdout);
    t.false(hasStackTrace(r.stderr), r.stderr);
    t.false((await listSnapshotsCli(conn)).some((s) => s.host === 'victor'));
    await assertNothingDangling(t);
    const again = await backupCli(conn, images.victor.path, 'victor', 'sda');
    t.is(again.code, 0, again.stderr);
    t.is(
      await restoreCli(conn, summaryOf(again).snapshot, path.join(dir, 'victor.out')),
      images.victor.sha256,
    );
  },
);

test.serial(
  'an S3 request that never gets an answer fails within the configured request timeout',
  async (t) => {
    // The adapter must not wait forever on a stalled S3: every agent request would hang behind it.
    const options = {
      kind: 's3' as const,
      endpoint: proxy.endpoint,
      region: s3.region,
      bucket: s3.bucket,
      forcePathStyle: true,
      maxAttempts: 1,
      requestTimeoutMs: 2000,
      credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
    };
    const storage = await openStorage(options);
    await proxy.setMode({ kind: 'stall' });
    try {
      const outcome = await Promise.race([
        storage.put('stall-probe', Buffer.from('x')).then(
          () => 'stored',
          (err: Error) => `failed: ${err.message}`,
        ),
        new Promise<string>((resolve) => setTimeout(() => resolve('still waiting after 15 s'), 15_000)),
      ]);
      t.regex(outcome, /^failed/, outcome);
    } finally {
      await proxy.setMode({ kind: 'pass' });
      await storage.close();
    }
  },
);
