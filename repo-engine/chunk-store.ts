import zstdBinding from 'zstd-napi/binding.js';
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
  encodeRawChunkForStorage,
  encodeStoredChunk,
  sha256Hex,
  TooLargeError,
} from './chunk-format.js';
import { ChunkReadCache, type ReadHold } from './chunk-read-cache.js';
import { HEX64 } from './manifest-codec.js';
import type { ChunkLease, StoredChunk } from './types.js';

export const CHUNKS_PREFIX = 'chunks/';

/** `chunks/ab/cd/abcd…`: two levels of fan-out keep any one directory (or S3 listing page run) small. */
export function chunkKey(id: string): string {
  return `${CHUNKS_PREFIX}${id.slice(0, 2)}/${id.slice(2, 4)}/${id}`;
}

/** The id a listed key names, or undefined for anything that is not a well-formed chunk key. */
export function chunkIdFromKey(key: string): string | undefined {
  const m = /^chunks\/([0-9a-f]{2})\/([0-9a-f]{2})\/([0-9a-f]{64})$/.exec(key);
  const id = m?.[3];
  return id?.startsWith(`${m?.[1]}${m?.[2]}`) ? id : undefined;
}

export function checkChunkId(id: string): string {
  if (typeof id !== 'string' || !HEX64.test(id))
    throw new InvalidInputError(
      `chunk id ${JSON.stringify(String(id).slice(0, 80))} is not 64 lowercase hex characters`,
    );
  return id;
}

/** What putChunk decided to store, after checking the upload. */
export interface PreparedChunk {
  id: string;
  rawLength: number;
  /** The whole stored object: header + payload. */
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
  ) {
    this.reads = new ChunkReadCache(cacheBytes);
  }

  /**
   * Checks an upload: a zstd payload is decompressed (never beyond the chunker's max, whatever the frame
   * claims) and SHA-256 of the raw bytes must equal `id`. Returns the raw bytes; throws HashMismatch,
   * TooLarge or InvalidInput before anything is stored.
   */
  verifyUpload(id: string, payload: Buffer, encoding: ChunkEncoding): number {
    checkChunkId(id);
    if (encoding !== 'raw' && encoding !== 'zstd')
      throw new InvalidInputError(`unknown chunk encoding ${String(encoding)}`);
    // The decompressed bytes live only until the hash below, synchronously: one scratch buffer serves all uploads.
    this.uploadScratch ??= Buffer.allocUnsafe(this.maxRawBytes + 1);
    const raw =
      encoding === 'zstd'
        ? decompressBounded(payload, this.maxRawBytes, `chunk ${id}`, this.uploadScratch)
        : payload;
    if (raw.length === 0) throw new InvalidInputError(`chunk ${id} is empty`);
    if (raw.length > this.maxRawBytes)
      throw new TooLargeError(
        `chunk ${id} is ${raw.length} bytes, more than the repository's chunk maximum ${this.maxRawBytes}`,
        { chunk: id, limit: this.maxRawBytes },
      );
    const actual = sha256Hex(raw);
    if (actual !== id)
      throw new HashMismatchError(`chunk ${id}: uploaded bytes hash to ${actual}`, { chunk: id, actual });
    return raw.length;
  }

  /** A zstd upload is kept as sent (the agent already paid for compression); a raw one is compressed here. */
  prepare(id: string, rawLength: number, payload: Buffer, encoding: ChunkEncoding): PreparedChunk {
    const alloc = (n: number) => this.objects.takeBuffer(n);
    if (encoding === 'zstd')
      return { id, rawLength, bytes: encodeStoredChunk('zstd', rawLength, payload, alloc) };
    return { id, rawLength, bytes: encodeRawChunkForStorage(payload, alloc) };
  }

  /**
   * Stores a prepared chunk; once stored, its buffer is recycled: do not use it again. After a failure it is
   * left to the garbage collector, since a storage client that gave up may not be done reading it.
   */
  async write(chunk: PreparedChunk): Promise<void> {
    await this.storage.put(chunkKey(chunk.id), chunk.bytes);
    this.objects.giveBack(chunk.bytes);
  }

  /** Raw bytes, hash-checked. NotFound when the object is absent, Corrupt when it does not match its id. */
  async readRaw(id: string, opts: { bypassCache?: boolean } = {}): Promise<Buffer> {
    checkChunkId(id);
    const stored = await this.readStoredBytes(id, opts.bypassCache ? 'bypass' : 'keep');
    return this.decodeAndCheck(id, stored).raw;
  }

  /** The stored payload as is (for serving without recompression), after checking it hashes to `id`. */
  async readStored(id: string): Promise<StoredChunk> {
    checkChunkId(id);
    const stored = await this.readStoredBytes(id, 'keep');
    const { chunk } = this.decodeAndCheck(id, stored);
    return { encoding: chunk.encoding, rawLength: chunk.rawLength, payload: chunk.payload };
  }

  /**
   * The stored payload as is, after structural checks only (header, raw length within the chunker max, a
   * zstd frame's declared size): no decompression, no hash. For a reader that verifies SHA-256(raw) === id
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
    } catch (err) {
      this.forget(id);
      throw new CorruptError(`chunk ${id} is corrupt: ${(err as Error).message}`, { chunk: id });
    }
    return { encoding: chunk.encoding, rawLength: chunk.rawLength, payload: chunk.payload };
  }

  /** The 9-byte header only: reindex learns raw sizes of unreferenced chunks from it. */
  async readHeader(id: string): Promise<{ encoding: ChunkEncoding; rawLength: number }> {
    const head = await this.storage.getBytes(chunkKey(id), { start: 0, end: CHUNK_HEADER_BYTES - 1 });
    return decodeStoredChunkHeader(head, id);
  }

  forget(id: string): void {
    this.reads.forget(id);
  }

  async deleteMany(ids: string[]): Promise<void> {
    for (const id of ids) this.forget(id);
    for (let i = 0; i < ids.length; i += 1000)
      await this.storage.deleteMany(ids.slice(i, i + 1000).map(chunkKey));
  }

  /**
   * The whole stored object. `bypass` reads storage into memory of its own, caching nothing (verify reads
   * every chunk once and must not evict what restores are reading). Only the stored object is cached, never
   * its raw bytes too: a verified read re-checks the hash on every decode anyway.
   */
  private async readStoredBytes(id: string, hold: ReadHold | 'bypass'): Promise<Buffer> {
    const fetch = async (alloc?: BufferAllocator) => {
      try {
        return await this.storage.getBytes(chunkKey(id), undefined, alloc);
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
    const declared = zstdFrameContentSize(chunk.payload);
    if (declared !== undefined && declared !== chunk.rawLength)
      throw new Error(`its zstd frame declares ${declared} bytes, its header says ${chunk.rawLength}`);
  }
}

/** A zstd frame's declared content size, undefined when it declares none; throws when it is not a frame. */
function zstdFrameContentSize(payload: Buffer): number | undefined {
  let declared: number | null;
  try {
    declared = zstdBinding.getFrameContentSize(payload);
  } catch (err) {
    throw new Error(`its payload is not a zstd frame (${(err as Error).message})`);
  }
  return declared ?? undefined;
}
