import { isDiskvaultError } from '../common/errors.js';
import type { StorageAdapter } from '../storage-adapters/adapter.js';
import { CHUNKS_PREFIX, type ChunkStore } from './chunk-store.js';
import { IndexDb, removeDbFiles } from './index-db.js';
import { MANIFEST_ENTRY_BYTES, type ManifestHeader } from './manifest-codec.js';
import type { ManifestStore } from './manifest-store.js';
import { ProtectionStore } from './protection.js';

export const DEFAULT_TENANT = 'default';

export interface RebuildResult {
  snapshots: number;
  chunks: number;
  unreadableManifests: string[];
  missingChunks: number;
}

/**
 * Builds a complete index at `path` from storage alone: one snapshot row and one reference per manifest
 * entry (so refcounts equal the live index's, which counts a chunk named twice twice), ownership from the
 * manifests' tenant, stored sizes from the chunk listing, protected flags from the protected/ markers.
 * Chunks in storage that no manifest names get refcount 0 and their mtime as touch time: gc collects them
 * after the grace period, as it would orphans.
 * The new index is built beside the live one and only swapped in by the caller, so a failed rebuild
 * leaves the old index untouched.
 * Only a manifest whose bytes are damaged (CorruptError) is left out. Any other failure to read one (storage
 * unavailable, a network error, EACCES) fails the whole rebuild: a snapshot left out for a passing reason
 * would leave its chunks unreferenced, and gc would delete them while its manifest stays in storage.
 */
export async function rebuildIndex(opts: {
  storage: StorageAdapter;
  manifests: ManifestStore;
  chunks: ChunkStore;
  path: string;
  repositoryId: string;
  log: (m: string) => void;
}): Promise<{ index: IndexDb; result: RebuildResult }> {
  const index = IndexDb.create(opts.path, opts.repositoryId);
  try {
    const db = index.db;
    const addRef = db
      .prepare(
        'INSERT INTO chunks (id, refcount, raw_size, stored_size, touched_at) VALUES (?, 1, ?, 0, 0) ON CONFLICT (id) DO UPDATE SET refcount = refcount + 1 RETURNING raw_size',
      )
      .pluck();
    // Chunks whose manifests disagree on their length: the stored chunk's header settles it below (a
    // manifest committed by an older server may give a wrong one).
    const disputed = new Set<string>();
    const own = db.prepare('INSERT OR IGNORE INTO owners (chunk, tenant) VALUES (?, ?)');
    const unreadableManifests: string[] = [];
    let snapshots = 0;
    for await (const { id, mtimeMs } of opts.manifests.listIds()) {
      // A manifest is read whole before anything of it is indexed: a corrupt trailer must not leave half
      // its references counted.
      let header: ManifestHeader;
      const batches: Buffer[] = [];
      try {
        const { reader, stream } = await opts.manifests.reader(id);
        header = reader.header;
        try {
          for await (const b of reader.entryBatches()) batches.push(b);
        } finally {
          stream.destroy();
        }
      } catch (err) {
        if (!(isDiskvaultError(err) && err.code === 'Corrupt')) {
          opts.log(
            `reindex: manifest ${id} could not be read (${(err as Error).message}); the rebuild stopped and the index is unchanged`,
          );
          throw err;
        }
        // Its chunks are not counted: gc frees those no other snapshot uses, once the grace period is over.
        opts.log(`reindex: manifest ${id} is corrupt and was left out: ${(err as Error).message}`);
        unreadableManifests.push(id);
        continue;
      }
      const tenant = header.tenant ?? DEFAULT_TENANT;
      index.transaction(() => {
        // A manifest stored before receipt times were recorded: its object was written when it was received.
        const receivedAt = header.receivedAt ?? new Date(mtimeMs).toISOString();
        index.insertSnapshotRow({ ...header, id, tenant, receivedAt });
        for (const b of batches) {
          for (let at = 0; at < b.length; at += MANIFEST_ENTRY_BYTES) {
            const chunk = b.subarray(at, at + 32);
            const length = b.readUInt32BE(at + 32);
            if (addRef.get(chunk, length) !== length) disputed.add(chunk.toString('hex'));
            own.run(chunk, tenant);
          }
        }
      });
      snapshots++;
    }

    // Protection markers: the flag follows storage. A marker of a snapshot that is gone protects nothing.
    for (const id of await new ProtectionStore(opts.storage).markedIds()) {
      if (!index.setProtected(id, true))
        opts.log(`reindex: protection marker of snapshot ${id}, which has no manifest, was ignored`);
    }

    const setStored = db.prepare('UPDATE chunks SET stored_size = ?, touched_at = ? WHERE id = ?');
    const addUnreferenced = db.prepare(
      'INSERT INTO chunks (id, refcount, raw_size, stored_size, touched_at) VALUES (?, 0, ?, ?, ?)',
    );
    // An encrypted repository's chunk names are keyed hashes: the referenced chunks' names are computed
    // from the ids the manifests gave, and any other object is opened to learn the id it holds.
    // The names wait in a temporary table rather than in memory: millions of chunks would take gigabytes.
    const codec = opts.chunks.codec;
    db.exec('CREATE TEMP TABLE chunk_names (name TEXT PRIMARY KEY, id BLOB NOT NULL) WITHOUT ROWID');
    if (codec.encrypted) {
      db.function('diskvault_chunk_key', { deterministic: true }, (id: unknown) =>
        codec.chunkKey((id as Buffer).toString('hex')),
      );
      db.exec('INSERT INTO chunk_names (name, id) SELECT diskvault_chunk_key(id), id FROM chunks');
    }
    const idOfName = db.prepare('SELECT id FROM chunk_names WHERE name = ?').raw();
    const idByKey = (key: string): string | undefined =>
      (idOfName.get(key) as [Buffer] | undefined)?.[0].toString('hex');
    type Listed = { key: string; id: string | undefined; size: number; mtimeMs: number };
    let pending: Listed[] = [];
    const flush = async () => {
      const unknown: Listed[] = [];
      index.transaction(() => {
        for (const p of pending)
          if (!p.id || setStored.run(p.size, Math.floor(p.mtimeMs), Buffer.from(p.id, 'hex')).changes === 0)
            unknown.push(p);
      });
      for (const u of unknown) {
        try {
          const { id, header } = await opts.chunks.identify(u.key, u.id);
          addUnreferenced.run(Buffer.from(id, 'hex'), header.rawLength, u.size, Math.floor(u.mtimeMs));
        } catch (err) {
          opts.log(
            `reindex: chunk object ${u.id ?? u.key} has no readable header and was left out: ${(err as Error).message}`,
          );
        }
      }
      pending = [];
    };
    for await (const e of opts.storage.list(CHUNKS_PREFIX)) {
      if (codec.chunkNameOfKey(e.key) === undefined) continue;
      const id = codec.chunkIdFromKey(e.key) ?? (codec.encrypted ? idByKey(e.key) : undefined);
      pending.push({ key: e.key, id, size: e.size, mtimeMs: e.mtimeMs });
      if (pending.length >= 5000) await flush();
    }
    await flush();
    const setRawSize = db.prepare('UPDATE chunks SET raw_size = ? WHERE id = ? AND stored_size > 0');
    for (const id of disputed) {
      try {
        setRawSize.run((await opts.chunks.readHeader(id)).rawLength, Buffer.from(id, 'hex'));
      } catch (err) {
        opts.log(
          `reindex: manifests disagree on chunk ${id}'s length and its header is unreadable: ${(err as Error).message}`,
        );
      }
    }
    // Nobody owns a chunk that is not stored: uploads then see it missing and repair it.
    db.prepare('DELETE FROM owners WHERE chunk IN (SELECT id FROM chunks WHERE stored_size = 0)').run();
    const missingChunks = (
      db.prepare('SELECT COUNT(*) AS n FROM chunks WHERE stored_size = 0').get() as { n: number }
    ).n;
    if (missingChunks > 0)
      opts.log(
        `reindex: ${missingChunks} chunks named by manifests are missing from storage; run verify to see which snapshots are damaged`,
      );
    db.exec('DROP TABLE chunk_names');
    const chunks = (db.prepare('SELECT COUNT(*) AS n FROM chunks').get() as { n: number }).n;
    return { index, result: { snapshots, chunks, unreadableManifests, missingChunks } };
  } catch (err) {
    index.close();
    // The half-built file is of no use to anyone; failing to remove it must not hide why the rebuild failed.
    try {
      removeDbFiles(opts.path);
    } catch {}
    throw err;
  }
}
