import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { isDiskvaultError, NotFoundError } from '../common/errors.js';
import type { StorageAdapter } from '../storage-adapters/adapter.js';
import { encodeManifestHead, HEX64, type ManifestHeader, ManifestReader } from './manifest-codec.js';

export const SNAPSHOTS_PREFIX = 'snapshots/';

export function snapshotKey(id: string): string {
  return `${SNAPSHOTS_PREFIX}${id}`;
}

export function snapshotIdFromKey(key: string): string | undefined {
  const id = key.slice(SNAPSHOTS_PREFIX.length);
  return key.startsWith(SNAPSHOTS_PREFIX) && HEX64.test(id) ? id : undefined;
}

/**
 * Snapshot manifests in storage, in the shared binary format (manifest-codec.ts) with `id` and `tenant`
 * set in the header. A manifest is written once, whole, by one atomic put, and never modified.
 */
export class ManifestStore {
  constructor(private readonly storage: StorageAdapter) {}

  /** `entries` is the concatenated 36-byte entries exactly as they arrived in the commit body. */
  async write(header: ManifestHeader, entries: Buffer): Promise<void> {
    if (!header.id) throw new Error('a stored manifest needs an id');
    const head = encodeManifestHead(header);
    const trailer = createHash('sha256').update(head).update(entries).digest();
    await this.storage.put(snapshotKey(header.id), Buffer.concat([head, entries, trailer]));
  }

  async open(id: string): Promise<Readable> {
    try {
      return await this.storage.get(snapshotKey(id));
    } catch (err) {
      if (isDiskvaultError(err) && err.code === 'NotFound')
        throw new NotFoundError(`snapshot ${id} has no manifest in storage`, { snapshot: id });
      throw err;
    }
  }

  /** A reader positioned after the header; CorruptError on any damage (source 'storage'). */
  async reader(id: string): Promise<{ reader: ManifestReader; stream: Readable }> {
    const stream = await this.open(id);
    try {
      return { reader: await ManifestReader.open(stream, 'storage'), stream };
    } catch (err) {
      stream.destroy();
      throw err;
    }
  }

  async header(id: string): Promise<ManifestHeader> {
    const { reader, stream } = await this.reader(id);
    stream.destroy();
    return reader.header;
  }

  /** Every entry batch of a manifest (36-byte entries), the trailer checked at the end. */
  async *entryBatches(id: string): AsyncGenerator<Buffer> {
    const { reader, stream } = await this.reader(id);
    try {
      yield* reader.entryBatches();
    } finally {
      stream.destroy();
    }
  }

  async delete(id: string): Promise<void> {
    await this.storage.delete(snapshotKey(id));
  }

  async *listIds(): AsyncGenerator<{ id: string; mtimeMs: number }> {
    for await (const e of this.storage.list(SNAPSHOTS_PREFIX)) {
      const id = snapshotIdFromKey(e.key);
      if (id) yield { id, mtimeMs: e.mtimeMs };
    }
  }
}
