import {
  CorruptError,
  HashMismatchError,
  InvalidInputError,
  isDiskvaultError,
  NotFoundError,
} from '../common/errors.js';
import type { BufferAllocator, StorageAdapter } from '../storage-adapters/adapter.js';
import { BufferRecycler } from './buffer-recycler.js';
import {
  CHUNK_HEADER_BYTES,
  type ChunkEncoding,
  decodeStoredChunk,
  decodeStoredChunkHeader,
  decompressBounded,
  sha256Hex,
  storedChunkHeader,
  storedFormOfRaw,
  TooLargeError,
  zstdPayloadProblem,
} from './chunk-format.js';
import { ChunkReadCache, type ReadHold } from './chunk-read-cache.js';
import { HEX64 } from './manifest-codec.js';
import { sealedChunkProblem } from './sealed-chunk.js';
import { type ObjectCodec, PLAINTEXT_OBJECTS } from './stored-objects.js';
import type { ChunkLease, StoredChunk } from './types.js';

export { CHUNKS_PREFIX } from './stored-objects.js';

/** A chunk's key in a new plaintext repository (any other names it through its ObjectCodec). */
export function chunkKey(id: string): string {
  return PLAINTEXT_OBJECTS.chunkKey(id);
}

export function checkChunkId(id: string): string {
  if (typeof id !== 'string' || !HEX64.test(id))
    throw new InvalidInputError(
      `chunk id ${JSON.stringify(String(id).slice(0, 80))} is not 64 lowercase hex characters`,
    );
  return id;
}

/** A checked upload: its raw length, and whether its zstd payload is already the form the repository stores. */
export interface VerifiedUpload {
  rawLength: number;
  /** A zstd payload that is exactly one frame declaring `rawLength` (zstdPayloadProblem): stored as sent. */
  canonical: boolean;
}

/** What putChunk decided to store, after checking the upload. */
export interface PreparedChunk {
  id: string;
  rawLength: number;
  /** The whole object as stored: header + payload, sealed in an encrypted repository (so its length is the stored size). */
  bytes: Buffer;
}

/**
 * Chunk objects in storage: checks uploads, writes them, reads them back hash-checked. Knows nothing of
 * refcounts or sessions. Reads go through a ChunkReadCache: concurrent reads of one chunk share one storage
 * read, and chunks read again while still in its probation part are cached, so restoring many machines from
 * one golden image reads each chunk from storage once, not once per machine.
 */
export class ChunkStore {
  private readonly reads: ChunkReadCache;
  private uploadScratch: Buffer | undefined;
  /** Stored objects being written: recycled once written, never kept (the read cache has its own). */
  private readonly objects = new BufferRecycler(32 * 1024 * 1024);

  constructor(
    private readonly storage: StorageAdapter,
    private readonly maxRawBytes: number,
    cacheBytes: number,
    /** Names and seals chunk objects: plaintext or encrypted (stored-objects.ts). */
    readonly codec: ObjectCodec = PLAINTEXT_OBJECTS,
  ) {
    this.reads = new ChunkReadCache(cacheBytes);
  }

  /**
   * Checks an upload: a zstd payload is decompressed (never beyond the chunker's max, whatever the frame
   * claims) and SHA-256 of the raw bytes must equal `id`. Throws HashMismatch, TooLarge or InvalidInput
   * before anything is stored. Any zstd payload whose bytes check out is accepted, but only one in the
   * canonical form (see zstdPayloadProblem) may be stored as sent: prepare() re-encodes the others.
   */
  verifyUpload(id: string, payload: Buffer, encoding: ChunkEncoding, keyId?: string): VerifiedUpload {
    checkChunkId(id);
    if (encoding === 'sealed') return this.verifySealedUpload(id, payload, keyId);
    if (encoding !== 'raw' && encoding !== 'zstd')
      throw new InvalidInputError(`unknown chunk encoding ${String(encoding)}`);
    const raw = this.uploadedRaw(id, payload, encoding);
    if (raw.length === 0) throw new InvalidInputError(`chunk ${id} is empty`);
    if (raw.length > this.maxRawBytes)
      throw new TooLargeError(
        `chunk ${id} is ${raw.length} bytes, more than the repository's chunk maximum ${this.maxRawBytes}`,
        { chunk: id, limit: this.maxRawBytes },
      );
    const actual = sha256Hex(raw);
    if (actual !== id)
      throw new HashMismatchError(`chunk ${id}: uploaded bytes hash to ${actual}`, { chunk: id, actual });
    return {
      rawLength: raw.length,
      canonical: encoding === 'zstd' && zstdPayloadProblem(payload, raw.length) === undefined,
    };
  }

  /**
   * A sealed chunk's checks (sealed-chunk.ts): structure, lengths within the chunker max, sealed with the
   * session's key, and `id` bound to that key and the chunk's keyed id. Its content is the key holder's
   * secret: the server cannot hash it, so it never tries. HashMismatch when the id is not the chunk's.
   */
  private verifySealedUpload(id: string, payload: Buffer, keyId: string | undefined): VerifiedUpload {
    if (keyId === undefined)
      throw new InvalidInputError(`chunk ${id}: a sealed chunk needs an upload session opened with its key`);
    const problem = sealedChunkProblem(payload, id, this.maxRawBytes, { keyId });
    if (problem !== undefined) {
      const wrongId = problem.startsWith('its id');
      if (wrongId) throw new HashMismatchError(`chunk ${id}: ${problem}`, { chunk: id });
      throw new InvalidInputError(`chunk ${id} is not a valid sealed chunk: ${problem}`, { chunk: id });
    }
    return { rawLength: payload.readUInt32BE(21), canonical: true };
  }

  /**
   * The raw bytes of an upload. A zstd payload is decompressed into one scratch buffer shared by all
   * uploads: use the result synchronously, before any await.
   */
  private uploadedRaw(id: string, payload: Buffer, encoding: ChunkEncoding): Buffer {
    if (encoding !== 'zstd') return payload;
    this.uploadScratch ??= Buffer.allocUnsafe(this.maxRawBytes + 1);
    return decompressBounded(payload, this.maxRawBytes, `chunk ${id}`, this.uploadScratch);
  }

  /**
   * The object to store for a verified upload. A canonical zstd payload is kept as sent (the agent already
   * paid for compression); a raw one is compressed here, and so is any other zstd payload (several frames,
   * a frame without its size, skippable frames), after decompressing it again: what is stored must decode
   * to exactly the verified bytes for every reader, whatever form the uploader chose.
   */
  prepare(id: string, upload: VerifiedUpload, payload: Buffer, encoding: ChunkEncoding): PreparedChunk {
    const { rawLength } = upload;
    if (encoding === 'sealed' || (encoding === 'zstd' && upload.canonical))
      return { id, rawLength, bytes: this.objectOf(id, encoding, rawLength, payload) };
    const raw = this.uploadedRaw(id, payload, encoding);
    if (raw.length !== rawLength)
      throw new Error(`chunk ${id} decompressed to another length the second time`);
    const form = storedFormOfRaw(raw);
    return { id, rawLength, bytes: this.objectOf(id, form.encoding, rawLength, form.payload) };
  }

  /**
   * The stored object of a chunk, in recycled memory, from its header and payload: joined, or in an
   * encrypted repository sealed straight from the two, so the payload is copied once (by the cipher).
   */
  private objectOf(id: string, encoding: ChunkEncoding, rawLength: number, payload: Buffer): Buffer {
    const pieces = [storedChunkHeader(encoding, rawLength), payload];
    return this.codec.sealChunk(id, pieces, (n) => this.objects.takeBuffer(n));
  }

  /**
   * Stores a prepared chunk; once stored, its buffer is recycled: do not use it again. After a failure it is
   * left to the garbage collector, since a storage client that gave up may not be done reading it.
   */
  async write(chunk: PreparedChunk): Promise<void> {
    await this.storage.put(this.codec.chunkKey(chunk.id), chunk.bytes);
    // A replaced copy (one found damaged) may still sit in the read cache.
    this.forget(chunk.id);
    this.objects.giveBack(chunk.bytes);
  }

  /**
   * Raw bytes, hash-checked. NotFound when the object is absent, Corrupt when it does not match its id.
   * A sealed chunk has no raw bytes the server could read: InvalidInput, unless `sealedAsIs` (verify),
   * which gets the sealed chunk after every check that needs no key.
   */
  async readRaw(id: string, opts: { bypassCache?: boolean; sealedAsIs?: boolean } = {}): Promise<Buffer> {
    checkChunkId(id);
    const stored = await this.readStoredBytes(id, opts.bypassCache ? 'bypass' : 'keep');
    const { chunk, raw } = this.decodeAndCheck(id, stored);
    if (chunk.encoding === 'sealed' && !opts.sealedAsIs)
      throw new InvalidInputError(`chunk ${id} is sealed end to end: only its key's holder can read it`, {
        chunk: id,
      });
    return raw;
  }

  /** The stored payload as is (for serving without recompression), after checking it hashes to `id`. */
  async readStored(id: string, opts: { bypassCache?: boolean } = {}): Promise<StoredChunk> {
    checkChunkId(id);
    const stored = await this.readStoredBytes(id, opts.bypassCache ? 'bypass' : 'keep');
    const { chunk } = this.decodeAndCheck(id, stored);
    return { encoding: chunk.encoding, rawLength: chunk.rawLength, payload: chunk.payload };
  }

  /**
   * The stored payload as is, after structural checks only (header, raw length within the chunker max, a
   * zstd payload being exactly one frame that declares the raw length): no decompression, no hash. For a reader that verifies SHA-256(raw) === id
   * itself before using the bytes (the agent's restore does), so checking here too would only double the
   * work; a corrupt object is then detected and named by that reader. See docs/restore.md.
   */
  async readStoredUnverified(id: string): Promise<StoredChunk> {
    checkChunkId(id);
    return this.checkedStructure(id, await this.readStoredBytes(id, 'keep'));
  }

  /**
   * readStoredUnverified, for a reader that is done with the payload soon (the server, once a response is
   * sent): the memory it lies in is then reused for another read.
   */
  async leaseStoredUnverified(id: string): Promise<ChunkLease> {
    checkChunkId(id);
    const stored = await this.readStoredBytes(id, 'lease');
    let released = false;
    const release = (reusable: boolean) => {
      if (released) return;
      released = true;
      this.reads.release(stored, reusable);
    };
    try {
      return { ...this.checkedStructure(id, stored), release };
    } catch (err) {
      release(true);
      throw err;
    }
  }

  /** Buffers the read path handed out again instead of allocating (for tests and diagnostics). */
  get reusedReadBuffers(): number {
    return this.reads.reusedBuffers;
  }

  /** Reusable read buffers held by the cache or by leases. */
  get heldReadBuffers(): number {
    return this.reads.heldBuffers;
  }

  private checkedStructure(id: string, stored: Buffer): StoredChunk {
    let chunk: ReturnType<typeof decodeStoredChunk>;
    try {
      chunk = decodeStoredChunk(stored, id);
      checkStructure(chunk, this.maxRawBytes);
      if (chunk.encoding === 'sealed') sealedIdCheck(chunk, id, this.maxRawBytes);
    } catch (err) {
      this.forget(id);
      throw new CorruptError(`chunk ${id} is corrupt: ${(err as Error).message}`, { chunk: id });
    }
    return { encoding: chunk.encoding, rawLength: chunk.rawLength, payload: chunk.payload };
  }

  /**
   * The 9-byte header only: reindex learns raw sizes of unreferenced chunks from it. An encrypted object
   * only opens whole, so it is read whole.
   */
  async readHeader(id: string): Promise<{ encoding: ChunkEncoding; rawLength: number }> {
    return (await this.identify(this.codec.chunkKey(id), id)).header;
  }

  /** The id and header of the chunk object at a listed key (reindex and gc meet keyed names this way). */
  async identify(
    key: string,
    expectId?: string,
  ): Promise<{ id: string; header: { encoding: ChunkEncoding; rawLength: number } }> {
    const id = expectId ?? this.codec.chunkIdFromKey(key);
    if (!this.codec.encrypted && id) {
      const head = await this.storage.getBytes(key, { start: 0, end: CHUNK_HEADER_BYTES - 1 });
      return { id, header: decodeStoredChunkHeader(head, id) };
    }
    const opened = this.codec.openChunk(key, await this.storage.getBytes(key), expectId);
    return { id: opened.id, header: decodeStoredChunkHeader(opened.stored, opened.id) };
  }

  /**
   * Raw bytes of the chunk object at a listed key, checked against the id it holds, cache bypassed: verify
   * reads objects whose id a keyed name does not tell.
   */
  async readRawByKey(key: string): Promise<{ id: string; raw: Buffer }> {
    const known = this.codec.chunkIdFromKey(key);
    if (known) return { id: known, raw: await this.readRaw(known, { bypassCache: true, sealedAsIs: true }) };
    const { id, stored } = this.codec.openChunk(key, await this.storage.getBytes(key));
    return { id, raw: this.decodeAndCheck(id, stored).raw };
  }

  forget(id: string): void {
    this.reads.forget(id);
  }

  async deleteMany(ids: string[]): Promise<void> {
    for (const id of ids) this.forget(id);
    for (let i = 0; i < ids.length; i += 1000)
      await this.storage.deleteMany(ids.slice(i, i + 1000).map((id) => this.codec.chunkKey(id)));
  }

  /**
   * The whole stored object. `bypass` reads storage into memory of its own, caching nothing (verify reads
   * every chunk once and must not evict what restores are reading). Only the stored object is cached, never
   * its raw bytes too: a verified read re-checks the hash on every decode anyway.
   */
  private async readStoredBytes(id: string, hold: ReadHold | 'bypass'): Promise<Buffer> {
    const fetch = async (alloc?: BufferAllocator) => {
      const key = this.codec.chunkKey(id);
      try {
        return this.codec.openChunk(key, await this.storage.getBytes(key, undefined, alloc), id).stored;
      } catch (err) {
        if (isDiskvaultError(err) && err.code === 'NotFound')
          throw new NotFoundError(`chunk ${id} is missing from storage`, { chunk: id });
        throw err;
      }
    };
    return hold === 'bypass' ? fetch() : this.reads.read(id, fetch, hold);
  }

  private decodeAndCheck(
    id: string,
    stored: Buffer,
  ): { chunk: ReturnType<typeof decodeStoredChunk>; raw: Buffer } {
    let chunk: ReturnType<typeof decodeStoredChunk>;
    let raw: Buffer;
    try {
      chunk = decodeStoredChunk(stored, id);
      checkStructure(chunk, this.maxRawBytes);
      if (chunk.encoding === 'sealed') {
        // Everything a server can check of a sealed chunk; checkStructure bound its id to its key.
        sealedIdCheck(chunk, id, this.maxRawBytes);
        return { chunk, raw: chunk.payload };
      }
      raw =
        chunk.encoding === 'zstd'
          ? decompressBounded(chunk.payload, chunk.rawLength, `chunk ${id}`)
          : chunk.payload;
    } catch (err) {
      this.forget(id);
      throw new CorruptError(`chunk ${id} is corrupt: ${(err as Error).message}`, { chunk: id });
    }
    if (raw.length !== chunk.rawLength || sha256Hex(raw) !== id) {
      this.forget(id);
      throw new CorruptError(`chunk ${id} is corrupt: its stored bytes do not hash to its id`, { chunk: id });
    }
    return { chunk, raw };
  }
}

/** What can be checked of a stored chunk without decompressing or hashing it; throws a plain Error. */
function checkStructure(chunk: ReturnType<typeof decodeStoredChunk>, maxRawBytes: number): void {
  if (chunk.rawLength === 0) throw new Error('claims 0 raw bytes');
  if (chunk.rawLength > maxRawBytes)
    throw new Error(`claims ${chunk.rawLength} raw bytes, more than the chunker max ${maxRawBytes}`);
  if (chunk.encoding === 'raw' && chunk.payload.length !== chunk.rawLength)
    throw new Error(`holds ${chunk.payload.length} raw bytes, its header says ${chunk.rawLength}`);
  if (chunk.encoding === 'zstd') {
    const problem = zstdPayloadProblem(chunk.payload, chunk.rawLength);
    if (problem) throw new Error(problem);
  }
}

/** A stored sealed chunk's own checks: its structure, its header agreeing with the object's, its id its key's. */
function sealedIdCheck(chunk: ReturnType<typeof decodeStoredChunk>, id: string, maxRawBytes: number): void {
  const problem = sealedChunkProblem(chunk.payload, id, maxRawBytes, { expectRawLength: chunk.rawLength });
  if (problem) throw new Error(problem);
}
