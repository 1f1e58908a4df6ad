import test from 'ava';
import { backup, call, chunkOf, type TestChunk } from '../helpers/api-client.js';
import { runCli } from '../helpers/backup-e2e.js';
import { startTestServer } from '../helpers/server.js';

// What monitoring watches per disk: /metrics gauges, GET /v1/stats `disks`, and `diskvault stats`.

async function snapshotAt(
  url: string,
  token: string,
  host: string,
  disk: string,
  time: string,
  chunks: TestChunk[],
  unreadable: [number, number][] = [],
): Promise<string> {
  return (await backup(url, token, host, disk, chunks, { time, unreadable })).snapshot.id as string;
}

test('each disk reports its snapshot count and its newest snapshot: time, size, unreadable bytes', async (t) => {
  const srv = await startTestServer({ storage: 'local' });
  try {
    const admin = srv.adminToken;
    const web2 = await srv.makeToken('agent', ['web2']);
    const chunks = [chunkOf('a'), chunkOf('b'), chunkOf('c')];
    const size = 3 * 40_000;
    // Dated in the past, out of order: imports, which need an admin token.
    const older = await snapshotAt(srv.url, admin, 'web1', 'sda', '2026-11-27T02:15:00.000Z', chunks);
    // Committed first but taken later: "newest" follows the snapshot's time, not the commit order.
    const newest = await snapshotAt(srv.url, admin, 'web1', 'sda', '2026-11-28T02:15:00.000Z', chunks, [
      [4096, 512],
      [8192, 1024],
    ]);
    await snapshotAt(srv.url, admin, 'web1', 'sda', '2026-11-26T02:15:00.000Z', chunks);
    await snapshotAt(srv.url, admin, 'web1', 'sdb', '2026-11-28T03:00:00.000Z', chunks.slice(0, 1));
    await snapshotAt(srv.url, admin, 'web2', 'sda', '2026-11-20T01:00:00.000Z', chunks.slice(1));

    const metrics = (await call(srv.url, admin, 'GET', '/metrics')).bytes.toString();
    const gauge = (name: string, host: string, disk: string) =>
      new RegExp(`^${name}\\{tenant="default",host="${host}",disk="${disk}"\\} (\\S+)$`, 'm').exec(
        metrics,
      )?.[1];
    t.is(gauge('diskvault_disk_snapshots', 'web1', 'sda'), '3');
    t.is(gauge('diskvault_disk_snapshots', 'web1', 'sdb'), '1');
    t.is(gauge('diskvault_disk_snapshots', 'web2', 'sda'), '1');
    t.is(
      gauge('diskvault_disk_last_snapshot_timestamp_seconds', 'web1', 'sda'),
      String(Date.parse('2026-11-28T02:15:00Z') / 1000),
    );
    t.is(gauge('diskvault_disk_last_snapshot_size_bytes', 'web1', 'sda'), String(size));
    t.is(gauge('diskvault_disk_last_snapshot_unreadable_bytes', 'web1', 'sda'), '1536');
    t.is(gauge('diskvault_disk_last_snapshot_unreadable_bytes', 'web1', 'sdb'), '0');
    t.is(gauge('diskvault_disk_last_snapshot_size_bytes', 'web2', 'sda'), String(2 * 40_000));

    const all = (await call(srv.url, admin, 'GET', '/v1/stats')).json;
    t.deepEqual(
      all.disks.map((d: { host: string; disk: string; snapshots: number }) => [d.host, d.disk, d.snapshots]),
      [
        ['web1', 'sda', 3],
        ['web1', 'sdb', 1],
        ['web2', 'sda', 1],
      ],
    );
    t.deepEqual(all.disks[0].newest, {
      id: newest,
      time: '2026-11-28T02:15:00.000Z',
      size,
      unreadableBytes: 1536,
    });
    // An agent token sees its own host's disks only.
    const own = (await call(srv.url, web2, 'GET', '/v1/stats')).json;
    t.deepEqual(
      own.disks.map((d: { host: string; disk: string }) => `${d.host}/${d.disk}`),
      ['web2/sda'],
    );

    const human = await runCli(['stats'], { DISKVAULT_SERVER: srv.url, DISKVAULT_TOKEN: admin });
    t.is(human.code, 0, human.stderr);
    t.regex(
      human.stdout,
      /^ {2}web1\/sda: 2026-11-28T02:15:00\.000Z \(\d+\.\d (h|days) ago\), 117\.2 KiB, 3 snapshots, 1\.5 KiB UNREADABLE$/m,
    );
    t.regex(human.stdout, /^ {2}web2\/sda: 2026-11-20T01:00:00\.000Z \(.* ago\), 78\.1 KiB, 1 snapshot$/m);

    // Once the newest is deleted, the one before it is the newest.
    t.is((await call(srv.url, admin, 'DELETE', `/v1/snapshots/${newest}`)).status, 204);
    const after = (await call(srv.url, admin, 'GET', '/v1/stats')).json;
    t.is(after.disks[0].snapshots, 2);
    t.is(after.disks[0].newest.id, older);
    t.is(after.disks[0].newest.unreadableBytes, 0);
  } finally {
    await srv.stop();
  }
});
