import { createHash } from 'node:crypto';
import { CorruptError, InvalidInputError } from '../common/errors.js';
import { NAME_PATTERN, TAG_PATTERN } from '../common/names.js';

/**
 * The binary manifest: the one format used on the wire (commit body, manifest download) and in storage.
 * Compact (36 bytes a chunk: a 2 TiB disk at 1 MiB chunks is ~72 MB, not a 200 MB JSON array) and
 * streamable (header first, then fixed-size entries, then a trailer hash over everything before it).
 *
 *   magic    8 bytes  "DVMANIF1"
 *   hlen     u32 BE   length of the header JSON
 *   header   hlen bytes UTF-8 JSON, a ManifestHeader
 *   entries  chunkCount x (32-byte SHA-256 of the chunk's raw bytes, u32 BE raw length)
 *   trailer  32 bytes SHA-256 of every byte before it
 */
export const MANIFEST_MAGIC = Buffer.from('DVMANIF1', 'ascii');
/** A chunk id in binary: its SHA-256. */
export const ID_BYTES = 32;
/** An entry: the id, then the chunk's length (u32 BE). */
export const MANIFEST_ENTRY_BYTES = ID_BYTES + 4;
export const MANIFEST_FORMAT_VERSION = 1;
/** A header is metadata, not data: anything larger is hostile. */
export const MAX_MANIFEST_HEADER_BYTES = 1024 * 1024;

export interface ChunkerParams {
  min: number;
  avg: number;
  max: number;
}

export interface ManifestHeader {
  formatVersion: number;
  /** 64 hex; assigned by the repository at commit, absent in the commit body. */
  id?: string;
  host: string;
  disk: string;
  /** ISO 8601 UTC. */
  time: string;
  /** Image size in bytes: the sum of the entries' lengths. */
  size: number;
  /** SHA-256 (hex) of the whole image. */
  sha256: string;
  chunker: ChunkerParams;
  tags: string[];
  /** [offset, length] ranges that could not be read at backup time and were stored as zeros. */
  unreadable: [number, number][];
  /** The container the image was read from: raw, qcow2, vhd, vmdk, vdi. */
  sourceFormat: string;
  chunkCount: number;
  /**
   * The dedup domain that committed the snapshot; set by the repository when it stores the manifest (any
   * value in a commit body is replaced), so reindex can rebuild chunk ownership from storage alone.
   */
  tenant?: string;
  /**
   * ISO 8601 UTC: when the server received the commit, by its own clock. Set by the repository when it
   * stores the manifest (any value in a commit body is replaced); absent in manifests stored before it was
   * recorded, whose receipt is then taken from the stored object's modification time.
   */
  receivedAt?: string;
  /**
   * Present when the agent sealed the snapshot with an end-to-end key: `sha256` is then empty, and the
   * entries name sealed chunks of that key (sealed-chunk.ts).
   */
  e2e?: ManifestE2e;
}

/** A manifest's end-to-end part: the key's public id and the secrets only the key opens. */
export interface ManifestE2e {
  /** 32 hex: the key's public id. */
  keyId: string;
  /** Base64: the sealed secrets (the image's SHA-256), docs/repository-format.md "End-to-end manifests". */
  sealed: string;
}

export interface ManifestEntry {
  /** 64 hex. */
  id: string;
  length: number;
}

export function encodeManifestHead(header: ManifestHeader): Buffer {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(4);
  len.writeUInt32BE(json.length);
  return Buffer.concat([MANIFEST_MAGIC, len, json]);
}

export function encodeEntry(
  id: Buffer | string,
  length: number,
  out = Buffer.alloc(MANIFEST_ENTRY_BYTES),
  at = 0,
): Buffer {
  const raw = typeof id === 'string' ? Buffer.from(id, 'hex') : id;
  if (raw.length !== 32) throw new InvalidInputError('a chunk id is 32 bytes');
  raw.copy(out, at);
  out.writeUInt32BE(length, at + 32);
  return out;
}

/** Builds a whole manifest in memory: for tests and small images; large ones stream through ManifestWriter. */
export function encodeManifest(header: ManifestHeader, entries: ManifestEntry[]): Buffer {
  const head = encodeManifestHead({ ...header, chunkCount: entries.length });
  const body = Buffer.alloc(entries.length * MANIFEST_ENTRY_BYTES);
  for (const [i, e] of entries.entries()) encodeEntry(e.id, e.length, body, i * MANIFEST_ENTRY_BYTES);
  const trailer = createHash('sha256').update(head).update(body).digest();
  return Buffer.concat([head, body, trailer]);
}

/**
 * Streams a manifest out piece by piece: `head()`, then `entry()` for every chunk, then `trailer()`.
 * Each returns the bytes to write; the writer keeps only the running hash.
 */
export class ManifestWriter {
  private readonly hash = createHash('sha256');
  private written = 0;
  constructor(private readonly header: ManifestHeader) {}
  head(): Buffer {
    const b = encodeManifestHead(this.header);
    this.hash.update(b);
    return b;
  }
  entries(buf: Buffer): Buffer {
    if (buf.length % MANIFEST_ENTRY_BYTES !== 0) throw new InvalidInputError('partial manifest entry');
    this.written += buf.length / MANIFEST_ENTRY_BYTES;
    this.hash.update(buf);
    return buf;
  }
  trailer(): Buffer {
    if (this.written !== this.header.chunkCount) {
      throw new InvalidInputError(
        `manifest names ${this.written} chunks, header says ${this.header.chunkCount}`,
      );
    }
    return this.hash.digest();
  }
}

/**
 * Reads a manifest from any async byte source, validating as it goes: magic, header shape, entry count,
 * sum of lengths equal to the image size, and the trailer hash. `entries` yields batches so a caller can
 * work per batch (index lookups) rather than per chunk. Throws CorruptError (stored) or InvalidInputError
 * (wire) on any inconsistency; the caller chooses which by `source`.
 */
export class ManifestReader {
  private buf: Buffer = Buffer.alloc(0);
  private readonly hash = createHash('sha256');
  private iter: AsyncIterator<Buffer | Uint8Array | string>;
  private done = false;
  header!: ManifestHeader;

  private constructor(
    input: AsyncIterable<Buffer | Uint8Array | string>,
    private readonly source: 'wire' | 'storage',
  ) {
    this.iter = input[Symbol.asyncIterator]();
  }

  static async open(
    input: AsyncIterable<Buffer | Uint8Array | string>,
    source: 'wire' | 'storage',
  ): Promise<ManifestReader> {
    const r = new ManifestReader(input, source);
    await r.readHeader();
    return r;
  }

  private fail(message: string): never {
    if (this.source === 'wire') throw new InvalidInputError(`bad manifest: ${message}`);
    throw new CorruptError(`corrupt manifest: ${message}`);
  }

  private async fill(n: number): Promise<boolean> {
    while (this.buf.length < n && !this.done) {
      const next = await this.iter.next();
      if (next.done) {
        this.done = true;
        break;
      }
      const v = next.value;
      const piece =
        typeof v === 'string'
          ? Buffer.from(v)
          : Buffer.isBuffer(v)
            ? v
            : Buffer.from(v.buffer, v.byteOffset, v.byteLength);
      this.buf = this.buf.length === 0 ? piece : Buffer.concat([this.buf, piece]);
    }
    return this.buf.length >= n;
  }

  private take(n: number, hashed = true): Buffer {
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    if (hashed) this.hash.update(out);
    return out;
  }

  private async readHeader(): Promise<void> {
    if (!(await this.fill(12))) this.fail('truncated before the header');
    if (!this.buf.subarray(0, 8).equals(MANIFEST_MAGIC)) this.fail('not a diskvault manifest (bad magic)');
    const hlen = this.buf.readUInt32BE(8);
    if (hlen === 0 || hlen > MAX_MANIFEST_HEADER_BYTES) this.fail(`header length ${hlen} out of range`);
    this.take(12);
    if (!(await this.fill(hlen))) this.fail('truncated header');
    let parsed: unknown;
    try {
      parsed = JSON.parse(this.take(hlen).toString('utf8'));
    } catch {
      this.fail('header is not JSON');
    }
    this.header = checkHeader(parsed, (m) => this.fail(m));
  }

  /** Yields batches of raw entries (36 bytes each) until chunkCount, then checks the trailer. */
  async *entryBatches(maxEntries = 4096): AsyncGenerator<Buffer> {
    let remaining = this.header.chunkCount;
    let total = 0;
    while (remaining > 0) {
      const want = Math.min(remaining, maxEntries);
      await this.fill(MANIFEST_ENTRY_BYTES); // at least one entry
      const have = Math.min(want, Math.floor(this.buf.length / MANIFEST_ENTRY_BYTES));
      if (have === 0) this.fail(`truncated: ${remaining} entries missing`);
      const batch = Buffer.from(this.take(have * MANIFEST_ENTRY_BYTES));
      for (let i = 0; i < have; i++) {
        const len = batch.readUInt32BE(i * MANIFEST_ENTRY_BYTES + 32);
        if (len === 0) this.fail('a chunk of length 0');
        total += len;
      }
      remaining -= have;
      yield batch;
    }
    if (total !== this.header.size)
      this.fail(`entries add up to ${total} bytes, header says ${this.header.size}`);
    const expected = this.hash.digest();
    if (!(await this.fill(32))) this.fail('truncated trailer');
    const trailer = this.take(32, false);
    if (!trailer.equals(expected)) this.fail('trailer hash does not match');
    await this.fill(1);
    if (this.buf.length > 0) this.fail('bytes after the trailer');
  }

  /** Convenience: every entry as an object. Only for callers that can afford one object per chunk. */
  async *entries(): AsyncGenerator<ManifestEntry> {
    for await (const batch of this.entryBatches()) {
      for (let at = 0; at < batch.length; at += MANIFEST_ENTRY_BYTES) {
        yield { id: batch.toString('hex', at, at + 32), length: batch.readUInt32BE(at + 32) };
      }
    }
  }
}

export const HEX64 = /^[0-9a-f]{64}$/;

function checkHeader(h: unknown, fail: (m: string) => never): ManifestHeader {
  if (typeof h !== 'object' || h === null || Array.isArray(h)) fail('header is not an object');
  const o = h as Record<string, unknown>;
  const isInt = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
  if (o.formatVersion !== MANIFEST_FORMAT_VERSION)
    fail(`unsupported manifest format version ${String(o.formatVersion)}`);
  if (o.id !== undefined && (typeof o.id !== 'string' || !HEX64.test(o.id)))
    fail('id is not 64 hex characters');
  if (typeof o.host !== 'string' || !NAME_PATTERN.test(o.host)) fail('host name is invalid');
  if (typeof o.disk !== 'string' || !NAME_PATTERN.test(o.disk)) fail('disk name is invalid');
  if (typeof o.time !== 'string' || Number.isNaN(Date.parse(o.time))) fail('time is not an ISO 8601 date');
  if (!isInt(o.size)) fail('size is not a non-negative integer');
  const e2e = o.e2e as Record<string, unknown> | undefined;
  if (
    e2e !== undefined &&
    (typeof e2e !== 'object' ||
      e2e === null ||
      typeof e2e.keyId !== 'string' ||
      !/^[0-9a-f]{32}$/.test(e2e.keyId) ||
      typeof e2e.sealed !== 'string' ||
      !/^[A-Za-z0-9+/]{1,4096}={0,2}$/.test(e2e.sealed))
  )
    fail('e2e is invalid');
  if (e2e !== undefined ? o.sha256 !== '' : typeof o.sha256 !== 'string' || !HEX64.test(o.sha256))
    fail(
      e2e !== undefined ? 'an end-to-end manifest has an empty sha256' : 'sha256 is not 64 hex characters',
    );
  const c = o.chunker as Record<string, unknown> | undefined;
  if (!c || !isInt(c.min) || !isInt(c.avg) || !isInt(c.max)) fail('chunker parameters are missing');
  if (
    !Array.isArray(o.tags) ||
    o.tags.length > 64 ||
    !o.tags.every((t) => typeof t === 'string' && TAG_PATTERN.test(t))
  ) {
    fail('tags are invalid');
  }
  if (
    !Array.isArray(o.unreadable) ||
    o.unreadable.length > 1_000_000 ||
    !o.unreadable.every((r) => Array.isArray(r) && r.length === 2 && isInt(r[0]) && isInt(r[1]))
  ) {
    fail('unreadable ranges are invalid');
  }
  if (typeof o.sourceFormat !== 'string' || !/^[a-z0-9]{1,16}$/.test(o.sourceFormat))
    fail('sourceFormat is invalid');
  if (!isInt(o.chunkCount)) fail('chunkCount is not a non-negative integer');
  if (o.tenant !== undefined && (typeof o.tenant !== 'string' || !NAME_PATTERN.test(o.tenant)))
    fail('tenant is invalid');
  if (
    o.receivedAt !== undefined &&
    (typeof o.receivedAt !== 'string' || Number.isNaN(Date.parse(o.receivedAt)))
  )
    fail('receivedAt is not an ISO 8601 date');
  return {
    formatVersion: o.formatVersion as number,
    ...(o.id !== undefined ? { id: o.id as string } : {}),
    host: o.host as string,
    disk: o.disk as string,
    time: new Date(o.time as string).toISOString(),
    size: o.size as number,
    sha256: o.sha256 as string,
    chunker: { min: c.min as number, avg: c.avg as number, max: c.max as number },
    tags: o.tags as string[],
    unreadable: o.unreadable as [number, number][],
    sourceFormat: o.sourceFormat as string,
    chunkCount: o.chunkCount as number,
    ...(o.tenant !== undefined ? { tenant: o.tenant as string } : {}),
    ...(o.receivedAt !== undefined ? { receivedAt: new Date(o.receivedAt as string).toISOString() } : {}),
    ...(e2e !== undefined ? { e2e: { keyId: e2e.keyId as string, sealed: e2e.sealed as string } } : {}),
  };
}
