import { readFile } from 'node:fs/promises';
import path from 'node:path';
import test from 'ava';
import { DiskvaultClient } from '../../agent/client.js';
import { corruptStoredChunk, readSnapshot } from '../helpers/backup-e2e.js';
import { backupCli, dv, removeDir, sha256File, summaryOf, tempDir } from '../helpers/reliability-harness.js';
import { writeImage } from '../helpers/reliability-images.js';
import { startTestServer } from '../helpers/server.js';

/**
 * A stored chunk that is well formed in every way the server checks on the download path, but holds other
 * bytes (resealed with the repository's key): only the restoring agent's hash check sees it. The restore
 * fails naming it and reports it; the server reads its copy in full, marks it damaged, and the next backup
 * of the machine uploads it again, after which the snapshot restores bit for bit.
 */
test('a chunk only the restore finds wrong is reported, marked damaged and healed by the next backup', async (t) => {
  const dir = await tempDir('damage-heal');
  // No chunk cache: the restore must read what is on disk.
  const srv = await startTestServer({ dataDir: path.join(dir, 'data'), cacheBytes: 0 });
  try {
    const conn = { server: srv.url, token: srv.adminToken };
    const image = path.join(dir, 'disk.img');
    await writeImage(image, { seed: 'heal', sizeMiB: 8, night: 0, changePercent: 0 });
    const first = await backupCli(conn, image, 'hotel', 'sda');
    t.is(first.code, 0, first.stderr);
    const snapshot = summaryOf(first).snapshot as string;

    const client = new DiskvaultClient({ server: srv.url, token: srv.adminToken });
    const { entries } = await readSnapshot(client, snapshot);
    client.close();
    const bytes = await readFile(image);
    let at = 0;
    let victim: string | undefined;
    for (const e of entries) {
      if (!victim && bytes.subarray(at, at + e.length).some((b) => b !== 0)) victim = e.id;
      at += e.length;
    }
    if (!victim) throw new Error('the image has no data chunk');
    await corruptStoredChunk(srv.dataDir, victim, { resealed: true });

    const restored = path.join(dir, 'restored.img');
    const bad = await dv(['restore', snapshot, restored], conn);
    t.is(bad.code, 1);
    t.regex(bad.stderr, new RegExp(`chunk ${victim} .*is damaged`));
    // One line names the chunk, with what the server did about it.
    const naming = bad.stderr.split('\n').filter((l) => l.includes(victim as string));
    t.is(naming.length, 1, bad.stderr);
    t.regex(naming[0] as string, /is damaged: .*; the server has marked its copy damaged/);

    // Without the report the chunk would count as stored and this backup would upload nothing.
    const heal = await backupCli(conn, image, 'hotel', 'sda');
    t.is(heal.code, 0, heal.stderr);
    t.true((summaryOf(heal).bytesUploaded as number) > 0, heal.stdout);
    const again = await dv(['restore', snapshot, path.join(dir, 'healed.img')], conn);
    t.is(again.code, 0, again.stderr);
    t.is(await sha256File(path.join(dir, 'healed.img')), await sha256File(image));
  } finally {
    await srv.stop();
    await removeDir(dir);
  }
});
