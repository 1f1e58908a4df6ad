import { createHmac, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { CONFIG_KEY, parseConfig } from '../../repo-engine/config.js';
import { deriveSubkeys, keyCheckValue } from '../../repo-engine/object-crypto.js';
import { Repository } from '../../repo-engine/repository.js';
import { MemoryKeyStore } from '../../repo-engine/repository-key.js';
import { chunkKeyOfName, chunkNameFromKey } from '../../repo-engine/stored-objects.js';
import type { StorageAdapter } from '../../storage-adapters/adapter.js';
import { openLocalStorage } from '../../storage-adapters/local.js';
import { backup, Clock, chunkImage, restore, sha256, TEST_CHUNKER } from '../helpers/engine-fixtures.js';

const HOUR = 3_600_000;

/** The ids of an image's chunks, as the fixtures' backup cuts it. */
function idsOf(image: Buffer): string[] {
  return chunkImage(image).map(sha256);
}

const NAME = `ab12${'c'.repeat(60)}`;

test('a chunk key has one folder level (chunks/ab/<name>) or two (chunks/ab/cd/<name>), and each layout reads only its own keys', (t) => {
  t.is(chunkKeyOfName(NAME, 1), `chunks/ab/${NAME}`);
  t.is(chunkKeyOfName(NAME, 2), `chunks/ab/12/${NAME}`);
  t.is(chunkNameFromKey(`chunks/ab/${NAME}`, 1), NAME);
  t.is(chunkNameFromKey(`chunks/ab/12/${NAME}`, 2), NAME);
  t.is(chunkNameFromKey(`chunks/ab/12/${NAME}`, 1), undefined);
  t.is(chunkNameFromKey(`chunks/ab/${NAME}`, 2), undefined);
  // A folder that does not match the name's first characters is no chunk key of either layout.
  t.is(chunkNameFromKey(`chunks/ac/${NAME}`, 1), undefined);
  t.is(chunkNameFromKey(`chunks/ab/13/${NAME}`, 2), undefined);
  t.is(chunkNameFromKey(`chunks/ab/${NAME.toUpperCase()}`, 1), undefined);
});

/** A local storage root and a clean-up for it. */
async function localStorage(): Promise<{ dir: string; storage: StorageAdapter; done: () => Promise<void> }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'dv-fanout-'));
  const storage = await openLocalStorage(path.join(dir, 'storage'));
  return { dir, storage, done: () => rm(dir, { recursive: true, force: true }) };
}

/**
 * A config as builds before `chunkFanout` wrote it: the field absent; for format 2 the MAC of
 * docs/repository-format.md.
 */
function configWithoutFanout(id: string, key?: Buffer): Buffer {
  const config: Record<string, unknown> = {
    formatVersion: key ? 2 : 1,
    id,
    chunker: TEST_CHUNKER,
    compression: 'zstd-1',
  };
  if (key) {
    const keys = deriveSubkeys(key, id);
    const keyCheck = keyCheckValue(keys);
    const fields = [
      2,
      id,
      TEST_CHUNKER.min,
      TEST_CHUNKER.avg,
      TEST_CHUNKER.max,
      'zstd-1',
      'aes-256-gcm-hkdf-sha256',
      keyCheck,
    ];
    const configMac = createHmac('sha256', keys.check)
      .update('diskvault repository config v1\n')
      .update(JSON.stringify(fields))
      .digest('hex');
    config.encryption = { scheme: 'aes-256-gcm-hkdf-sha256', keyCheck, configMac };
  }
  return Buffer.from(`${JSON.stringify(config, null, 2)}\n`);
}

/** Every folder under storage/chunks, as paths relative to it. */
async function chunkFolders(dir: string): Promise<string[]> {
  const entries = await readdir(path.join(dir, 'storage', 'chunks'), {
    recursive: true,
    withFileTypes: true,
  });
  return entries
    .filter((e) => e.isDirectory())
    .map((e) => path.relative(path.join(dir, 'storage', 'chunks'), path.join(e.parentPath, e.name)));
}

for (const encrypted of [true, false]) {
  const kind = encrypted ? 'encrypted' : 'plaintext';

  test(`${kind}: a new repository names chunkFanout 1 in its config and stores its chunks one folder deep`, async (t) => {
    const { dir, storage, done } = await localStorage();
    try {
      const repo = await Repository.open({
        storage,
        indexPath: path.join(dir, 'index.sqlite'),
        chunker: TEST_CHUNKER,
        encryption: encrypted ? 'aes-256-gcm' : 'none',
        keyStore: new MemoryKeyStore(),
      });
      const image = randomBytes(64 * 4096);
      const snap = await backup(repo, image);
      t.true((await restore(repo, snap.id)).equals(image));
      t.is(parseConfig(await storage.getBytes(CONFIG_KEY)).chunkFanout, 1);
      t.regex((await storage.getBytes(CONFIG_KEY)).toString('utf8'), /"chunkFanout": 1/);
      const folders = await chunkFolders(dir);
      t.true(folders.length > 1);
      t.true(
        folders.every((f) => /^[0-9a-f]{2}$/.test(f)),
        folders.join(' '),
      );
      for (const chunk of idsOf(image))
        t.regex(repo.storedObjects.chunkKey(chunk), /^chunks\/[0-9a-f]{2}\/[0-9a-f]{64}$/);
      t.true((await repo.verify({ readData: true })).ok);
      await repo.close();
    } finally {
      await done();
    }
  });

  test(`${kind}: a repository whose config names no fanout keeps its two folder levels through backup, verify, gc and reindex`, async (t) => {
    const { dir, storage, done } = await localStorage();
    try {
      const key = encrypted ? randomBytes(32) : undefined;
      await storage.put(CONFIG_KEY, configWithoutFanout(randomBytes(32).toString('hex'), key));
      const clock = new Clock();
      const options = {
        storage,
        indexPath: path.join(dir, 'index.sqlite'),
        keyStore: new MemoryKeyStore(key),
        gcGraceMs: HOUR,
        now: clock.now,
      };
      let repo = await Repository.open(options);
      t.is(repo.storedObjects.fanout, 2);
      const kept = randomBytes(40 * 4096);
      const dropped = randomBytes(40 * 4096);
      const keep = await backup(repo, kept);
      const drop = await backup(repo, dropped);
      const folders = await chunkFolders(dir);
      t.true(folders.some((f) => /^[0-9a-f]{2}\/[0-9a-f]{2}$/.test(f)));
      t.true(
        folders.every((f) => /^[0-9a-f]{2}(\/[0-9a-f]{2})?$/.test(f)),
        folders.join(' '),
      );
      for (const chunk of idsOf(kept))
        t.truthy(await storage.stat(repo.storedObjects.chunkKey(chunk)), 'stored under the two-level key');

      await repo.deleteSnapshot(drop.id);
      clock.advance(2 * HOUR);
      const report = await repo.gc();
      t.is(report.chunksDeleted, new Set(idsOf(dropped)).size);
      for (const chunk of idsOf(dropped))
        t.is(await storage.stat(repo.storedObjects.chunkKey(chunk)), undefined);
      t.true((await repo.verify({ readData: true })).ok);

      // The index lost: rebuilt from the two-level keys, and the kept snapshot restores.
      await repo.close();
      await rm(options.indexPath);
      repo = await Repository.open(options);
      t.true((await restore(repo, keep.id)).equals(kept));
      t.true((await repo.verify({ readData: true })).ok);
      t.is(parseConfig(await storage.getBytes(CONFIG_KEY)).chunkFanout, 2, 'the config is never rewritten');
      await repo.close();
    } finally {
      await done();
    }
  });
}

test('an encrypted config whose chunkFanout was removed or changed is refused as changed', async (t) => {
  for (const edit of [
    (c: string) => c.replace(/,\s*"chunkFanout": 1/, ''),
    (c: string) => c.replace('"chunkFanout": 1', '"chunkFanout": 2'),
  ]) {
    const { dir, storage, done } = await localStorage();
    try {
      const keyStore = new MemoryKeyStore();
      const indexPath = path.join(dir, 'index.sqlite');
      await (await Repository.open({ storage, indexPath, chunker: TEST_CHUNKER, keyStore })).close();
      const config = (await storage.getBytes(CONFIG_KEY)).toString('utf8');
      const edited = edit(config);
      t.not(edited, config);
      await storage.put(CONFIG_KEY, Buffer.from(edited));
      const err = await t.throwsAsync(Repository.open({ storage, indexPath, keyStore }));
      t.regex(err?.message ?? '', /config .* has been changed/);
    } finally {
      await done();
    }
  }
});

test('a config naming an unknown chunkFanout is refused', async (t) => {
  const { dir, storage, done } = await localStorage();
  try {
    const config = JSON.parse(configWithoutFanout(sha256(Buffer.from('x'))).toString('utf8'));
    await storage.put(CONFIG_KEY, Buffer.from(JSON.stringify({ ...config, chunkFanout: 3 })));
    const err = await t.throwsAsync(
      Repository.open({ storage, indexPath: path.join(dir, 'index.sqlite'), keyStore: new MemoryKeyStore() }),
    );
    t.regex(err?.message ?? '', /unknown chunkFanout 3/);
  } finally {
    await done();
  }
});
