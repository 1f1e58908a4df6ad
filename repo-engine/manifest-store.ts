import { createHash } from 'node:crypto';
import { pipeline, Readable } from 'node:stream';
import { isDiskvaultError, NotFoundError } from '../common/errors.js';
import type { StorageAdapter } from '../storage-adapters/adapter.js';
import { encodeManifestHead, HEX64, type ManifestHeader, ManifestReader } from './manifest-codec.js';
import { type ObjectCodec, PLAINTEXT_OBJECTS } from './stored-objects.js';

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
 * set in the header. A manifest is written once, whole, by one atomic put (streamed or not), and never
 * modified.
 */
export class ManifestStore {
  constructor(
    private readonly storage: StorageAdapter,
    /** Plaintext or sealed manifests (stored-objects.ts); names stay the random snapshot id either way. */
    private readonly codec: ObjectCodec = PLAINTEXT_OBJECTS,
  ) {}

  /**
   * Streams a manifest into storage as `entries` yields its entry batches, holding one batch at a time.
   * The put is atomic: when `entries` throws (a check failed half way), nothing is stored and the error
   * is passed on.
   */
  async writeStreamed(header: ManifestHeader, entries: AsyncIterable<Buffer>): Promise<void> {
    if (!header.id) throw new Error('a stored manifest needs an id');
    const head = encodeManifestHead(header);
    async function* pieces(): AsyncGenerator<Buffer> {
      const hash = createHash('sha256').update(head);
      yield head;
      for await (const batch of entries) {
        hash.update(batch);
        yield batch;
      }
      yield hash.digest();
    }
    let failure: unknown;
    const source = Readable.from(
      (async function* () {
        try {
          yield* pieces();
        } catch (err) {
          failure = err;
          throw err;
        }
      })(),
      { objectMode: false },
    );
    const key = snapshotKey(header.id);
    const sealing = this.codec.sealManifestStream(key);
    // pipeline passes a failed check on to the sealing stream, so the put sees it and stores nothing.
    const body = sealing ? pipeline(source, sealing, () => {}) : source;
    try {
      await this.storage.put(key, body);
    } catch (err) {
      // The check's own error, not the adapter's wrapping of it.
      throw failure ?? err;
    }
  }

  async open(id: string): Promise<Readable> {
    try {
      const key = snapshotKey(id);
      return await this.codec.openManifest(key, id, await this.storage.get(key));
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

  /** Every entry batch of a manifest (36-byte entries, up to `maxEntries` a batch), the trailer checked at the end. */
  async *entryBatches(id: string, maxEntries?: number): AsyncGenerator<Buffer> {
    const { reader, stream } = await this.reader(id);
    try {
      yield* reader.entryBatches(maxEntries);
    } finally {
      stream.destroy();
    }
  }

  async exists(id: string): Promise<boolean> {
    return (await this.storage.stat(snapshotKey(id))) !== undefined;
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
