import { type FileHandle, mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  MANIFEST_ENTRY_BYTES,
  type ManifestHeader,
  ManifestWriter,
} from '../../repo-engine/manifest-codec.js';

/**
 * The manifest's entries (36 bytes a chunk) as the backup produces them, kept in a temp file rather than in
 * memory: a 2 TiB disk has millions of chunks. Appends are buffered and written in order; the spool is read
 * back to build the commit body and to find the offsets of chunks the server says it lacks.
 */
const FLUSH_BYTES = 1 << 20;

export class ManifestSpool {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private written = 0;
  private entryCount = 0;

  private constructor(
    private readonly dir: string,
    private readonly file: FileHandle,
  ) {}

  static async create(): Promise<ManifestSpool> {
    const dir = await mkdtemp(join(tmpdir(), 'diskvault-backup-'));
    try {
      const file = await open(join(dir, 'entries'), 'w+', 0o600);
      return new ManifestSpool(dir, file);
    } catch (err) {
      await rm(dir, { recursive: true, force: true });
      throw err;
    }
  }

  get chunkCount(): number {
    return this.entryCount;
  }

  /** Appends whole entries (a multiple of 36 bytes); the caller guarantees image order. */
  async append(entries: Buffer): Promise<void> {
    this.pending.push(entries);
    this.pendingBytes += entries.length;
    this.entryCount += entries.length / MANIFEST_ENTRY_BYTES;
    if (this.pendingBytes >= FLUSH_BYTES) await this.flush();
  }

  private async flush(): Promise<void> {
    if (this.pendingBytes === 0) return;
    const data = Buffer.concat(this.pending, this.pendingBytes);
    this.pending = [];
    this.pendingBytes = 0;
    const at = this.written;
    this.written += data.length;
    await this.file.write(data, 0, data.length, at);
  }

  /** Every entry in order, in batches of whole entries. */
  async *batches(): AsyncGenerator<Buffer> {
    await this.flush();
    const size = FLUSH_BYTES - (FLUSH_BYTES % MANIFEST_ENTRY_BYTES);
    for (let at = 0; at < this.written; at += size) {
      const len = Math.min(size, this.written - at);
      const buf = Buffer.allocUnsafe(len);
      const { bytesRead } = await this.file.read(buf, 0, len, at);
      if (bytesRead !== len) throw new Error(`manifest spool: read ${bytesRead} of ${len} bytes`);
      yield buf;
    }
  }

  /** The complete binary manifest for `header` (its chunkCount must match), streamed from the spool. */
  async *manifest(header: ManifestHeader): AsyncGenerator<Buffer> {
    const writer = new ManifestWriter(header);
    yield writer.head();
    for await (const batch of this.batches()) yield writer.entries(batch);
    yield writer.trailer();
  }

  /** Offset and length of every chunk whose id is in `wanted` (hex), found by summing lengths in order. */
  async locate(wanted: Set<string>): Promise<{ id: string; offset: number; length: number }[]> {
    const found: { id: string; offset: number; length: number }[] = [];
    const seen = new Set<string>();
    let offset = 0;
    for await (const batch of this.batches()) {
      for (let at = 0; at < batch.length; at += MANIFEST_ENTRY_BYTES) {
        const length = batch.readUInt32BE(at + 32);
        const id = batch.toString('hex', at, at + 32);
        if (wanted.has(id) && !seen.has(id)) {
          seen.add(id);
          found.push({ id, offset, length });
        }
        offset += length;
      }
    }
    return found;
  }

  async close(): Promise<void> {
    await this.file.close().catch(() => {});
    await rm(this.dir, { recursive: true, force: true });
  }
}
