import test from 'ava';
import { clientChunkFetcher } from '../../agent/restore/client-fetcher.js';
import { selectSnapshot } from '../../agent/restore/snapshot-selector.js';
import type { SnapshotInfo } from '../../api/protocol.js';

function snap(id: string, host: string, disk: string, time: string): SnapshotInfo {
  return {
    id,
    host,
    disk,
    time,
    receivedAt: time,
    size: 1,
    sha256: 'f'.repeat(64),
    chunkCount: 1,
    tags: [],
    unreadable: [],
    sourceFormat: 'raw',
    tenant: 'default',
  };
}

const all = [
  snap(`ab${'1'.repeat(62)}`, 'web1', 'sda', '2026-01-02T00:00:00.000Z'),
  snap(`ab${'2'.repeat(62)}`, 'web1', 'sda', '2026-01-03T00:00:00.000Z'),
  snap(`cd${'3'.repeat(62)}`, 'web1', 'sdb', '2026-01-04T00:00:00.000Z'),
  snap(`ef${'4'.repeat(62)}`, 'web2', 'sda', '2026-01-05T00:00:00.000Z'),
];
const client = {
  async listSnapshots(f: { host?: string; disk?: string }) {
    return all.filter((s) => (!f.host || s.host === f.host) && (!f.disk || s.disk === f.disk));
  },
  async getSnapshot(id: string) {
    const s = all.find((x) => x.id === id);
    if (!s) throw new Error('not found');
    return s;
  },
};

test('latest picks the newest snapshot of the given host and disk', async (t) => {
  t.is((await selectSnapshot(client, 'latest', { host: 'web1', disk: 'sda' })).id, all[1].id);
});

test('latest without --host and --disk is refused', async (t) => {
  await t.throwsAsync(selectSnapshot(client, 'latest', { host: 'web1' }), { message: /--host and --disk/ });
});

test('a unique id prefix selects its snapshot; an ambiguous one is refused, not guessed', async (t) => {
  t.is((await selectSnapshot(client, 'cd33', {})).id, all[2].id);
  await t.throwsAsync(selectSnapshot(client, 'ab', {}), { message: /neither/ });
  await t.throwsAsync(selectSnapshot(client, 'abab', {}), { message: /no snapshot id starts with abab/ });
  const twoMatch = {
    ...client,
    listSnapshots: async () => [all[0], { ...all[1], id: `ab${'1'.repeat(61)}9` }],
  };
  await t.throwsAsync(selectSnapshot(twoMatch, 'ab11', {}), { message: /2 snapshots start with ab11/ });
});

test('the client fetcher trusts getChunk, but hands undecoded payloads to the restore to check', async (t) => {
  const raw = Buffer.from('x');
  const plain = clientChunkFetcher({ getChunk: async () => raw });
  t.deepEqual(await plain.fetch('a', 1), { encoding: 'raw', payload: raw, verified: true });
  const withPayload = clientChunkFetcher({
    getChunk: async () => raw,
    getChunkPayload: async () => ({ encoding: 'zstd' as const, payload: raw }),
  });
  t.deepEqual(await withPayload.fetch('a', 1), { encoding: 'zstd', payload: raw, verified: false });
});
