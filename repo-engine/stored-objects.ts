import { Readable, type Transform } from 'node:stream';
import { CorruptError } from '../common/errors.js';
import { keyedName, ObjectSealer, type RepositorySubkeys, SealedObjectError } from './object-crypto.js';

export const CHUNKS_PREFIX = 'chunks/';

/**
 * How many levels of two-hex-character folders lie between `chunks/` and a chunk object, fixed when a
 * repository is created (its config's `chunkFanout`): 1, `chunks/ab/abcd…`, for new repositories; 2,
 * `chunks/ab/cd/abcd…`, for those created with a config that names none. One level keeps a local repository
 * to 256 folders: with two, nearly every chunk of a young repository made a folder of its own (a median
 * 0.6 s of the server's CPU in a first backup of the 2 GiB benchmark image, docs/performance-notes.md) and
 * a grown one holds 65,536 folders, a 4 KiB block each, that every gc and verify listing walks. 256 folders
 * still keep a folder of a 10 TiB repository (10 million 1 MiB chunks) near 40,000 entries, which ext4 and
 * XFS index.
 */
export type ChunkFanout = 1 | 2;
export const NEW_REPOSITORY_CHUNK_FANOUT: ChunkFanout = 1;
/** The fanout of a repository whose config names none (created before configs named it). */
export const UNNAMED_CHUNK_FANOUT: ChunkFanout = 2;

const CHUNK_KEY_PATTERN: Record<ChunkFanout, RegExp> = {
  1: /^chunks\/([0-9a-f]{2})\/([0-9a-f]{64})$/,
  2: /^chunks\/([0-9a-f]{2}\/[0-9a-f]{2})\/([0-9a-f]{64})$/,
};

/** The key of the chunk object named `name` (64 hex) under `fanout`. */
export function chunkKeyOfName(name: string, fanout: ChunkFanout): string {
  return fanout === 1
    ? `${CHUNKS_PREFIX}${name.slice(0, 2)}/${name}`
    : `${CHUNKS_PREFIX}${name.slice(0, 2)}/${name.slice(2, 4)}/${name}`;
}

/**
 * The 64-hex name a listed key carries, or undefined for anything that is not a well-formed chunk key under
 * `fanout`.
 */
export function chunkNameFromKey(key: string, fanout: ChunkFanout): string | undefined {
  const m = CHUNK_KEY_PATTERN[fanout].exec(key);
  const name = m?.[2];
  return name !== undefined && m?.[1].replace('/', '') === name.slice(0, 2 * fanout) ? name : undefined;
}

/**
 * How chunk and manifest objects lie in storage: their names and their bytes. A plaintext repository (format
 * 1) names a chunk by its id and stores objects as they are; an encrypted one (format 2) names a chunk by a
 * keyed hash of its id and seals every object (object-crypto.ts). The chunk and manifest stores, gc, verify
 * and reindex go through this, so they work the same on both.
 */
export interface ObjectCodec {
  readonly encrypted: boolean;
  readonly fanout: ChunkFanout;
  /** The storage key of chunk `id`. */
  chunkKey(id: string): string;
  /**
   * The 64-hex name in a chunk key of this repository (the id, or its keyed hash); undefined for any other
   * key.
   */
  chunkNameOfKey(key: string): string | undefined;
  /**
   * The id a listed chunk key names when the name shows it (plaintext); undefined for a keyed name (the id
   * is then only known by computing names of known ids, or by opening the object).
   */
  chunkIdFromKey(key: string): string | undefined;
  /**
   * The object to store for chunk `id`'s stored form (chunk-format.ts), given as pieces to be joined (its
   * header and payload, say): a sealed object in memory from `alloc`, encrypted straight from the pieces;
   * when objects are stored as they are, the pieces joined (the one piece itself).
   */
  sealChunk(id: string, stored: Buffer[], alloc?: (length: number) => Buffer): Buffer;
  /**
   * A chunk object's stored form and the id it was written for; CorruptError naming the chunk (`expectId`,
   * or the storage key when the id is not known) when it does not open or holds another chunk. `object` is
   * the caller's to give up (a fresh read from storage): an encrypted one is decrypted in its own memory.
   */
  openChunk(key: string, object: Buffer, expectId?: string): { id: string; stored: Buffer };
  sealManifest(key: string, bytes: Buffer): Buffer;
  /** A Transform sealing a manifest written through it; undefined when manifests are stored as they are. */
  sealManifestStream(key: string): Transform | undefined;
  /**
   * The manifest's bytes as they stream from storage; the stream fails with CorruptError naming it. An
   * encrypted one resolves once its first segment is authenticated, so damage there (all of a manifest
   * sealed in one piece) is an error before any byte is handed on, not a cut stream.
   */
  openManifest(key: string, snapshot: string, stream: Readable): Promise<Readable>;
}

/** Objects stored as they are (format 1): a chunk is named by its id. */
class PlaintextObjects implements ObjectCodec {
  readonly encrypted = false;

  constructor(readonly fanout: ChunkFanout) {}

  chunkKey(id: string): string {
    return chunkKeyOfName(id, this.fanout);
  }

  chunkNameOfKey(key: string): string | undefined {
    return chunkNameFromKey(key, this.fanout);
  }

  chunkIdFromKey(key: string): string | undefined {
    return chunkNameFromKey(key, this.fanout);
  }

  sealChunk(_id: string, stored: Buffer[], alloc?: (length: number) => Buffer): Buffer {
    if (stored.length === 1) return stored[0] as Buffer;
    const length = stored.reduce((n, piece) => n + piece.length, 0);
    const out = alloc ? alloc(length) : Buffer.allocUnsafe(length);
    let at = 0;
    for (const piece of stored) at += piece.copy(out, at);
    return out;
  }

  openChunk(key: string, object: Buffer, expectId?: string): { id: string; stored: Buffer } {
    const id = expectId ?? chunkNameFromKey(key, this.fanout);
    if (!id) throw new CorruptError(`${key} is not a chunk key`);
    return { id, stored: object };
  }

  sealManifest(_key: string, bytes: Buffer): Buffer {
    return bytes;
  }

  sealManifestStream(): undefined {
    return undefined;
  }

  async openManifest(_key: string, _snapshot: string, stream: Readable): Promise<Readable> {
    return stream;
  }
}

/** A new plaintext repository's codec (tests and tools that make one without a config). */
export const PLAINTEXT_OBJECTS: ObjectCodec = new PlaintextObjects(NEW_REPOSITORY_CHUNK_FANOUT);

const ID_BYTES = 32;

/** Objects sealed with one repository's subkeys; chunk objects carry their 32-byte id before their bytes. */
export class EncryptedObjects implements ObjectCodec {
  readonly encrypted = true;
  private readonly sealer: ObjectSealer;

  constructor(
    private readonly keys: RepositorySubkeys,
    readonly fanout: ChunkFanout,
  ) {
    this.sealer = new ObjectSealer(keys.objects);
  }

  chunkKey(id: string): string {
    return chunkKeyOfName(keyedName(this.keys.names, id), this.fanout);
  }

  chunkNameOfKey(key: string): string | undefined {
    return chunkNameFromKey(key, this.fanout);
  }

  chunkIdFromKey(): undefined {
    return undefined;
  }

  sealChunk(id: string, stored: Buffer[], alloc?: (length: number) => Buffer): Buffer {
    return this.sealer.seal(this.chunkKey(id), [Buffer.from(id, 'hex'), ...stored], alloc);
  }

  openChunk(key: string, object: Buffer, expectId?: string): { id: string; stored: Buffer } {
    const what = expectId ? `chunk ${expectId}` : `chunk object ${key}`;
    let plain: Buffer;
    try {
      plain = this.sealer.openInPlace(key, object);
    } catch (err) {
      if (!(err instanceof SealedObjectError)) throw err;
      throw new CorruptError(`${what} is corrupt: ${err.message}`, chunkDetails(expectId, key));
    }
    if (plain.length <= ID_BYTES)
      throw new CorruptError(`${what} is corrupt: it holds no chunk`, chunkDetails(expectId, key));
    const id = plain.toString('hex', 0, ID_BYTES);
    // The name is a keyed hash of the id and authenticated with the object, so this only fails for an
    // object sealed under the wrong name by this repository's own key: still corruption, named as such.
    if ((expectId && id !== expectId) || this.chunkKey(id) !== key)
      throw new CorruptError(`${what} is corrupt: it holds chunk ${id}`, chunkDetails(expectId, key));
    return { id, stored: plain.subarray(ID_BYTES) };
  }

  sealManifest(key: string, bytes: Buffer): Buffer {
    return this.sealer.seal(key, [bytes]);
  }

  sealManifestStream(key: string): Transform {
    return this.sealer.sealStream(key);
  }

  async openManifest(key: string, snapshot: string, stream: Readable): Promise<Readable> {
    const opened = this.sealer.openStream(
      key,
      (err) => new CorruptError(`manifest of snapshot ${snapshot} is corrupt: ${err.message}`, { snapshot }),
    );
    stream.on('error', (err) => opened.destroy(err));
    opened.on('close', () => stream.destroy());
    return primed(stream.pipe(opened));
  }
}

/** `stream` after its first piece (or its end) has arrived: an early error rejects instead. */
async function primed(stream: Readable): Promise<Readable> {
  const it = stream[Symbol.asyncIterator]();
  let first: IteratorResult<Buffer>;
  try {
    first = await it.next();
  } catch (err) {
    stream.destroy();
    throw err;
  }
  async function* rest(): AsyncGenerator<Buffer> {
    try {
      if (first.done) return;
      yield first.value;
      for (let n = await it.next(); !n.done; n = await it.next()) yield n.value;
    } finally {
      stream.destroy();
    }
  }
  return Readable.from(rest(), { objectMode: false });
}

function chunkDetails(id: string | undefined, key: string): Record<string, unknown> {
  return id ? { chunk: id } : { key };
}

/** Codec for a repository with chunk folders `fanout`: encrypted with `keys`, or plaintext without. */
export function objectCodec(keys: RepositorySubkeys | undefined, fanout: ChunkFanout): ObjectCodec {
  return keys ? new EncryptedObjects(keys, fanout) : new PlaintextObjects(fanout);
}
