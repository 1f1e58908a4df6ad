import { randomBytes } from 'node:crypto';
import { type FileHandle, open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { ConflictError, InvalidInputError } from '../../common/errors.js';
import { MAX_VIRTUAL_SIZE, SECTOR } from './limits.js';

/**
 * Writes a sparse qcow2 v3 image from data arriving at any offset, in any order, in pieces of any length
 * (restore writes content-defined chunks that straddle clusters, several at once).
 *
 * Design: a guest cluster gets a host cluster the first time a non-zero byte lands in it, handed out in
 * arrival order right after the header cluster, and the bytes are written straight to their place there.
 * Nothing is buffered: bytes of a cluster not yet written are holes of the host file and read as zeros, so a
 * cluster filled by two chunks arriving minutes apart needs no memory in between. All-zero pieces allocate
 * nothing (zero clusters stay unallocated, hence zeros). The metadata — L2 tables, the L1 table, refcount
 * blocks and table, then the header — is written by finish(), after the data, into a temporary file that is
 * renamed over the target only when complete: a crash never leaves a half-valid image under the real name.
 */
const QCOW2_MAGIC = 0x514649fb;
const COPIED = 0x80000000; // high word of an L1/L2 entry: refcount is exactly 1
const REFCOUNT_ORDER = 4; // 16-bit refcounts, qemu's default
const HEADER_LENGTH = 104;

export interface Qcow2WriterOptions {
  /** 9..21; default 16 (64 KiB clusters, qemu's default). */
  clusterBits?: number;
}

export class Qcow2Writer {
  private readonly clusterSize: number;
  private readonly l2Entries: number;
  private readonly zeros: Buffer;
  /** Per L1 index: host offsets of the guest clusters that L2 table covers (0 = unallocated). */
  private readonly l2Tables = new Map<number, Float64Array>();
  private nextHost: number;
  private readonly pending = new Set<Promise<void>>();
  private failure: unknown = null;
  private state: 'open' | 'finishing' | 'done' = 'open';

  private constructor(
    private readonly handle: FileHandle,
    private readonly tempPath: string,
    readonly path: string,
    /** The size the guest asked for; the qcow2 size is this rounded up to a whole sector (qemu's rule). */
    readonly size: number,
    readonly clusterBits: number,
  ) {
    this.clusterSize = 2 ** clusterBits;
    this.l2Entries = this.clusterSize / 8;
    this.zeros = Buffer.alloc(this.clusterSize);
    this.nextHost = this.clusterSize; // cluster 0 holds the header
  }

  static async create(path: string, size: number, options: Qcow2WriterOptions = {}): Promise<Qcow2Writer> {
    const clusterBits = options.clusterBits ?? 16;
    if (!Number.isInteger(clusterBits) || clusterBits < 9 || clusterBits > 21)
      throw new InvalidInputError(`qcow2 cluster bits ${clusterBits} out of range (9..21)`);
    if (!Number.isSafeInteger(size) || size < 0 || size > MAX_VIRTUAL_SIZE)
      throw new InvalidInputError(`qcow2 image size ${size} out of range (0..64 TiB)`);
    const tempPath = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
    const handle = await open(tempPath, 'wx');
    return new Qcow2Writer(handle, tempPath, path, size, clusterBits);
  }

  /** Writes `data` at guest `offset`. Concurrent calls are fine; finish() waits for all of them. */
  writeAt(offset: number, data: Uint8Array): Promise<void> {
    if (this.state !== 'open')
      return Promise.reject(new ConflictError(`qcow2 writer for ${this.path} is already finished`));
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + data.length > this.size) {
      return Promise.reject(
        new InvalidInputError(
          `write of ${data.length} bytes at ${offset} falls outside the ${this.size}-byte image`,
        ),
      );
    }
    // Host clusters are handed out synchronously, before any await, so concurrent writers never share one.
    const runs = this.allocate(offset, data);
    const done = this.writeRuns(runs, data).catch((err) => {
      this.failure ??= err;
      throw err;
    });
    this.pending.add(done);
    done.then(
      () => this.pending.delete(done),
      () => this.pending.delete(done),
    );
    return done;
  }

  /** [host offset, data start, length] runs, coalesced where consecutive host clusters are contiguous. */
  private allocate(offset: number, data: Uint8Array): number[] {
    const runs: number[] = [];
    const cs = this.clusterSize;
    let at = 0;
    while (at < data.length) {
      const pos = offset + at;
      const cluster = Math.floor(pos / cs);
      const within = pos - cluster * cs;
      const length = Math.min(cs - within, data.length - at);
      const l1Index = Math.floor(cluster / this.l2Entries);
      const slot = cluster % this.l2Entries;
      let table = this.l2Tables.get(l1Index);
      let host = table ? table[slot] : 0;
      if (host === 0 && !isZero(data, at, length, this.zeros)) {
        if (!table) {
          table = new Float64Array(this.l2Entries);
          this.l2Tables.set(l1Index, table);
        }
        host = this.nextHost;
        this.nextHost += cs;
        table[slot] = host;
      }
      if (host !== 0) {
        const n = runs.length;
        if (n > 0 && runs[n - 3] + runs[n - 1] === host + within && runs[n - 2] + runs[n - 1] === at)
          runs[n - 1] += length;
        else runs.push(host + within, at, length);
      }
      at += length;
    }
    return runs;
  }

  private async writeRuns(runs: number[], data: Uint8Array): Promise<void> {
    for (let i = 0; i < runs.length; i += 3)
      await writeFully(this.handle, data, runs[i + 1], runs[i + 2], runs[i]);
  }

  /** Waits for outstanding writes, writes the metadata and header, and renames the image into place. */
  async finish(): Promise<void> {
    if (this.state !== 'open') throw new ConflictError(`qcow2 writer for ${this.path} is already finished`);
    this.state = 'finishing';
    try {
      await Promise.allSettled([...this.pending]);
      if (this.failure) throw this.failure;
      await this.writeMetadata();
      await this.handle.sync();
      await this.handle.close();
      await rename(this.tempPath, this.path);
      await syncDir(dirname(this.path));
      this.state = 'done';
    } catch (err) {
      await this.abort();
      throw err;
    }
  }

  /** Drops the partial image; the target path is left as it was. */
  async abort(): Promise<void> {
    this.state = 'done';
    await Promise.allSettled([...this.pending]);
    await this.handle.close().catch(() => {});
    await unlink(this.tempPath).catch(() => {});
  }

  private async writeMetadata(): Promise<void> {
    const cs = this.clusterSize;
    const qcowSize = Math.ceil(this.size / SECTOR) * SECTOR;
    const l1Size = Math.ceil(qcowSize / (cs * this.l2Entries));
    const l1Indexes = [...this.l2Tables.keys()].sort((a, b) => a - b);
    const dataEnd = this.nextHost;

    const l2Start = dataEnd;
    const l1Offset = l2Start + l1Indexes.length * cs;
    const l1Clusters = Math.max(1, Math.ceil((l1Size * 8) / cs));
    const refStart = l1Offset + l1Clusters * cs;
    const base = refStart / cs; // clusters before the refcount structures
    // The refcount structures count themselves too: grow them until they cover everything including them.
    const perBlock = (cs * 8) / 2 ** REFCOUNT_ORDER;
    let blocks = 0;
    let tableClusters = 0;
    for (;;) {
      const total = base + blocks + tableClusters;
      const needBlocks = Math.ceil(total / perBlock);
      const needTable = Math.ceil((needBlocks * 8) / cs);
      if (needBlocks === blocks && needTable === tableClusters) break;
      blocks = needBlocks;
      tableClusters = needTable;
    }
    const totalClusters = base + blocks + tableClusters;
    const tableOffset = refStart + blocks * cs;

    const cluster = Buffer.alloc(cs);
    const l1 = Buffer.alloc(l1Clusters * cs);
    for (let i = 0; i < l1Indexes.length; i++) {
      const table = this.l2Tables.get(l1Indexes[i]) as Float64Array;
      cluster.fill(0);
      for (let s = 0; s < table.length; s++) if (table[s] !== 0) putEntry(cluster, s * 8, table[s]);
      const host = l2Start + i * cs;
      await writeFully(this.handle, cluster, 0, cs, host);
      putEntry(l1, l1Indexes[i] * 8, host);
    }
    await writeFully(this.handle, l1, 0, l1.length, l1Offset);

    const table = Buffer.alloc(tableClusters * cs);
    for (let b = 0; b < blocks; b++) {
      cluster.fill(0);
      const first = b * perBlock;
      const count = Math.min(perBlock, totalClusters - first);
      for (let i = 0; i < count; i++) cluster.writeUInt16BE(1, i * 2);
      await writeFully(this.handle, cluster, 0, cs, refStart + b * cs);
      table.writeUInt32BE(Math.floor((refStart + b * cs) / 2 ** 32), b * 8);
      table.writeUInt32BE((refStart + b * cs) >>> 0, b * 8 + 4);
    }
    await writeFully(this.handle, table, 0, table.length, tableOffset);

    const header = Buffer.alloc(cs);
    header.writeUInt32BE(QCOW2_MAGIC, 0);
    header.writeUInt32BE(3, 4);
    header.writeUInt32BE(this.clusterBits, 20);
    header.writeBigUInt64BE(BigInt(qcowSize), 24);
    header.writeUInt32BE(l1Size, 36);
    header.writeBigUInt64BE(BigInt(l1Offset), 40);
    header.writeBigUInt64BE(BigInt(tableOffset), 48);
    header.writeUInt32BE(tableClusters, 56);
    header.writeUInt32BE(REFCOUNT_ORDER, 96);
    header.writeUInt32BE(HEADER_LENGTH, 100);
    // Bytes 104.. stay zero: an end-of-extensions marker.
    await this.handle.truncate(totalClusters * cs);
    // The header goes last: until it is written the file is not a qcow2 image at all.
    await writeFully(this.handle, header, 0, cs, 0);
  }
}

/** An L1/L2 entry: host offset with the COPIED flag (refcount 1, which every cluster here has). */
function putEntry(buf: Buffer, at: number, host: number): void {
  buf.writeUInt32BE((COPIED | Math.floor(host / 2 ** 32)) >>> 0, at);
  buf.writeUInt32BE(host >>> 0, at + 4);
}

function isZero(data: Uint8Array, at: number, length: number, zeros: Buffer): boolean {
  return Buffer.compare(zeros.subarray(0, length), data.subarray(at, at + length)) === 0;
}

async function writeFully(
  handle: FileHandle,
  data: Uint8Array,
  at: number,
  length: number,
  position: number,
): Promise<void> {
  let done = 0;
  while (done < length) {
    const { bytesWritten } = await handle.write(data, at + done, length - done, position + done);
    done += bytesWritten;
  }
}

async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } catch {
    // Some filesystems refuse fsync on directories; the rename is still atomic there.
  } finally {
    await handle.close();
  }
}

/** Converts a raw image file into a sparse qcow2 v3 image (all-zero clusters left unallocated). */
export async function writeQcow2FromRaw(
  rawPath: string,
  qcow2Path: string,
  options: Qcow2WriterOptions = {},
): Promise<void> {
  const input = await open(rawPath, 'r');
  try {
    const { size } = await input.stat();
    const writer = await Qcow2Writer.create(qcow2Path, size, options);
    try {
      const buf = Buffer.allocUnsafe(8 * 1024 * 1024);
      for (let pos = 0; pos < size; ) {
        const { bytesRead } = await input.read(buf, 0, Math.min(buf.length, size - pos), pos);
        if (bytesRead === 0) throw new InvalidInputError(`${rawPath} shrank while being converted`);
        await writer.writeAt(pos, buf.subarray(0, bytesRead));
        pos += bytesRead;
      }
    } catch (err) {
      await writer.abort();
      throw err;
    }
    await writer.finish();
  } finally {
    await input.close();
  }
}
