import { inflateRawSync, constants as zlibConstants } from 'node:zlib';
import { LRUCache } from 'lru-cache';
import zstdBinding from 'zstd-napi/binding.js';
import { CorruptError, InvalidInputError } from '../../common/errors.js';
import type { ImageSource } from '../source.js';
import { decompressExactly } from '../zstd-bounded.js';
import {
  type ChainContext,
  type ContainerFormat,
  type OpenBacking,
  refuseDetected,
  resolveBackingPath,
} from './chain.js';
import type { ImageFile } from './image-file.js';
import { MAX_TOP_TABLE_BYTES, MAX_VIRTUAL_SIZE, TABLE_CACHE_BYTES } from './limits.js';
import { type BlockMapper, type Extent, MappedImage } from './mapped-image.js';

/**
 * qcow2 v2/v3 reader (spec: qemu docs/interop/qcow2.txt). Two-level table: L1 (read whole at open) points to
 * L2 tables (one cluster each, cached), whose entries point to data clusters, say "zero", say "compressed",
 * or say nothing (then the backing file answers). Internal snapshots are ignored: the active disk is read.
 */
export const QCOW2_MAGIC = 0x514649fb;

const INCOMPAT_DIRTY = 1;
const INCOMPAT_CORRUPT = 2;
const INCOMPAT_DATA_FILE = 4;
const INCOMPAT_COMPRESSION = 8;
const INCOMPAT_EXTENDED_L2 = 16;
const EXT_BACKING_FORMAT = 0xe2792aca;
const TWO32 = 2 ** 32;
const READ_AHEAD = 1024 * 1024;

export interface Qcow2Header {
  version: number;
  clusterBits: number;
  size: number;
  l1Size: number;
  l1Offset: number;
  compression: 'zlib' | 'zstd';
  backingName: string | null;
  backingFormat: string | null;
}

function u64(buf: Buffer, at: number, what: string, file: ImageFile): number {
  const v = buf.readBigUInt64BE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER))
    throw new CorruptError(`qcow2 ${what} (${v}) in ${file.name} is absurd`);
  return Number(v);
}

/** Parses and checks the header: everything later code trusts is validated here. */
export async function readQcow2Header(file: ImageFile): Promise<Qcow2Header> {
  const head = await file.readExact(0, Math.min(file.size, 65536), 'qcow2 header');
  if (head.length < 72 || head.readUInt32BE(0) !== QCOW2_MAGIC)
    throw new CorruptError(`${file.name} is not a qcow2 image (header too short or bad magic)`);
  const version = head.readUInt32BE(4);
  if (version !== 2 && version !== 3)
    throw new InvalidInputError(`qcow2 version ${version} of ${file.name} is not supported (only 2 and 3)`);
  const clusterBits = head.readUInt32BE(20);
  if (clusterBits < 9 || clusterBits > 21)
    throw new CorruptError(`qcow2 cluster_bits ${clusterBits} in ${file.name} is out of range (9..21)`);
  const size = u64(head, 24, 'virtual size', file);
  if (size > MAX_VIRTUAL_SIZE)
    throw new InvalidInputError(`qcow2 virtual size ${size} of ${file.name} exceeds 64 TiB`);
  const cryptMethod = head.readUInt32BE(32);
  if (cryptMethod !== 0) {
    const kind = cryptMethod === 1 ? 'AES' : cryptMethod === 2 ? 'LUKS' : `method ${cryptMethod}`;
    throw new InvalidInputError(
      `${file.name} is an encrypted qcow2 image (${kind}); diskvault does not read encrypted images: decrypt it first (qemu-img convert --object secret,... -O qcow2)`,
    );
  }
  const l1Size = head.readUInt32BE(36);
  const l1Offset = u64(head, 40, 'L1 table offset', file);
  let compression: 'zlib' | 'zstd' = 'zlib';
  let headerLength = 72;
  if (version === 3) {
    if (head.length < 104) throw new CorruptError(`qcow2 v3 header of ${file.name} is truncated`);
    const incompatHi = head.readUInt32BE(72);
    const incompat = head.readUInt32BE(76);
    if (incompat & INCOMPAT_DATA_FILE)
      throw new InvalidInputError(
        `${file.name} uses a qcow2 external data file, which diskvault does not support: convert it with qemu-img convert -O qcow2`,
      );
    if (incompat & INCOMPAT_EXTENDED_L2)
      throw new InvalidInputError(
        `${file.name} uses qcow2 extended L2 entries (subclusters), which diskvault does not support: convert it with qemu-img convert -O qcow2`,
      );
    if (incompat & INCOMPAT_CORRUPT)
      throw new CorruptError(
        `${file.name} is marked corrupt by qemu; check and repair it first (qemu-img check -r all)`,
      );
    const known =
      INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTENDED_L2;
    if (incompatHi !== 0 || (incompat & ~known) !== 0)
      throw new InvalidInputError(
        `${file.name} uses unknown incompatible qcow2 features (0x${incompatHi.toString(16)}${incompat.toString(16).padStart(8, '0')})`,
      );
    headerLength = head.readUInt32BE(100);
    if (headerLength < 104 || headerLength > head.length)
      throw new CorruptError(`qcow2 header length ${headerLength} of ${file.name} is out of range`);
    if (incompat & INCOMPAT_COMPRESSION) {
      if (headerLength < 105)
        throw new CorruptError(`${file.name} announces a compression type but its header has no room for it`);
      const type = head[104];
      if (type === 1) compression = 'zstd';
      else if (type !== 0)
        throw new InvalidInputError(
          `qcow2 compression type ${type} of ${file.name} is not supported (zlib and zstd are)`,
        );
    }
  }
  const clusterSize = 2 ** clusterBits;
  const l2Entries = clusterSize / 8;
  const needL1 = Math.ceil(size / (clusterSize * l2Entries));
  if (l1Size < needL1)
    throw new CorruptError(
      `qcow2 L1 table of ${file.name} has ${l1Size} entries but the virtual size needs ${needL1}`,
    );
  if (l1Size * 8 > MAX_TOP_TABLE_BYTES)
    throw new CorruptError(`qcow2 L1 table of ${file.name} is absurdly large (${l1Size} entries)`);
  if (l1Size > 0 && l1Offset % clusterSize !== 0)
    throw new CorruptError(`qcow2 L1 table offset ${l1Offset} of ${file.name} is not cluster aligned`);

  const backingOffset = u64(head, 8, 'backing file offset', file);
  const backingLength = head.readUInt32BE(16);
  let backingName: string | null = null;
  if (backingOffset !== 0) {
    if (backingLength === 0 || backingLength > 1023)
      throw new CorruptError(
        `qcow2 backing file name length ${backingLength} of ${file.name} is out of range`,
      );
    backingName = (await file.readExact(backingOffset, backingLength, 'qcow2 backing file name')).toString(
      'utf8',
    );
    if (backingName.includes('\0'))
      throw new CorruptError(`qcow2 backing file name of ${file.name} contains a NUL byte`);
  }
  const backingFormat = readBackingFormat(head, headerLength, clusterSize, file);
  return { version, clusterBits, size, l1Size, l1Offset, compression, backingName, backingFormat };
}

/** Walks the header extensions (8-byte aligned, type 0 ends them) for the backing format name. */
function readBackingFormat(head: Buffer, start: number, clusterSize: number, file: ImageFile): string | null {
  let at = start;
  const end = Math.min(head.length, clusterSize);
  while (at + 8 <= end) {
    const type = head.readUInt32BE(at);
    const length = head.readUInt32BE(at + 4);
    if (type === 0) return null;
    if (at + 8 + length > end)
      throw new CorruptError(
        `qcow2 header extension 0x${type.toString(16)} of ${file.name} runs past the header cluster`,
      );
    if (type === EXT_BACKING_FORMAT) return head.toString('utf8', at + 8, at + 8 + length);
    at += 8 + Math.ceil(length / 8) * 8;
  }
  return null;
}

class Qcow2Mapper implements BlockMapper {
  private readonly clusterSize: number;
  private readonly l2Entries: number;
  private readonly l2Cache: LRUCache<number, Buffer>;
  private lastL2Offset = -1;
  private lastL2: Buffer | null = null;
  /** Bits 0..x-1 of a compressed descriptor hold the host offset; x-32 of them sit in the high word. */
  private readonly compressedHiBits: number;

  constructor(
    private readonly file: ImageFile,
    private readonly header: Qcow2Header,
    private readonly l1: Float64Array,
  ) {
    this.clusterSize = 2 ** header.clusterBits;
    this.l2Entries = this.clusterSize / 8;
    this.compressedHiBits = 62 - (header.clusterBits - 8) - 32;
    this.l2Cache = new LRUCache<number, Buffer>({
      maxSize: TABLE_CACHE_BYTES,
      sizeCalculation: (b) => b.length,
    });
  }

  private async l2Table(offset: number): Promise<Buffer> {
    if (offset === this.lastL2Offset && this.lastL2) return this.lastL2;
    let table = this.l2Cache.get(offset);
    if (!table) {
      table = await this.file.readExact(offset, this.clusterSize, 'qcow2 L2 table');
      this.l2Cache.set(offset, table);
    }
    this.lastL2Offset = offset;
    this.lastL2 = table;
    return table;
  }

  async map(offset: number, _maxLength: number, out: Extent): Promise<void> {
    const cluster = Math.floor(offset / this.clusterSize);
    const within = offset - cluster * this.clusterSize;
    out.length = this.clusterSize - within;
    const l2Offset = this.l1[Math.floor(cluster / this.l2Entries)];
    if (l2Offset === 0) {
      out.kind = 'backing';
      return;
    }
    const table = await this.l2Table(l2Offset);
    const at = (cluster % this.l2Entries) * 8;
    const hi = table.readUInt32BE(at);
    const lo = table.readUInt32BE(at + 4);
    if (hi & 0x40000000) {
      const host = (hi & (2 ** this.compressedHiBits - 1)) * TWO32 + lo;
      const sectors = (hi & 0x3fffffff) >>> this.compressedHiBits;
      if (host >= this.file.size) throw this.pastEnd('compressed cluster', host, offset);
      out.kind = 'compressed';
      out.host = host;
      // The stored size counts 512-byte sectors from the sector holding the start (spec: "nb_csectors").
      out.compressedLength = Math.min((sectors + 1) * 512 - (host % 512), this.file.size - host);
      out.clusterStart = cluster * this.clusterSize;
      return;
    }
    if (this.header.version === 3 && lo & 1) {
      out.kind = 'zero';
      return;
    }
    const host = (hi & 0x00ffffff) * TWO32 + ((lo & 0xfffffe00) >>> 0);
    if (host === 0) {
      out.kind = 'backing';
      return;
    }
    if (host % this.clusterSize !== 0)
      throw new CorruptError(
        `qcow2 data cluster offset ${host} for virtual offset ${offset} in ${this.file.name} is not cluster aligned`,
      );
    if (host >= this.file.size) throw this.pastEnd('data cluster', host, offset);
    out.kind = 'data';
    out.host = host + within;
  }

  private pastEnd(what: string, host: number, offset: number): CorruptError {
    return new CorruptError(
      `qcow2 ${what} for virtual offset ${offset} points to ${host}, past the end of ${this.file.name} (${this.file.size} bytes)`,
      { path: this.file.path, offset, host },
    );
  }

  /** Compressed clusters are packed back to back: one read of the next 1 MiB serves many of them. */
  private readAhead: Buffer | null = null;
  private readAheadAt = -1;

  private async compressedBytes(ext: Extent): Promise<Buffer> {
    const ahead = this.readAhead;
    if (
      ahead &&
      ext.host >= this.readAheadAt &&
      ext.host + ext.compressedLength <= this.readAheadAt + ahead.length
    ) {
      return ahead.subarray(ext.host - this.readAheadAt, ext.host - this.readAheadAt + ext.compressedLength);
    }
    const length = Math.min(Math.max(READ_AHEAD, ext.compressedLength), this.file.size - ext.host);
    const buf = await this.file.readExact(ext.host, length, 'qcow2 compressed cluster');
    this.readAhead = buf;
    this.readAheadAt = ext.host;
    return buf.subarray(0, ext.compressedLength);
  }

  async decompress(ext: Extent): Promise<Buffer> {
    const input = await this.compressedBytes(ext);
    if (this.header.compression === 'zstd') return await this.decompressZstd(input, ext);
    let out: Buffer;
    try {
      // Sync flush: the stored sectors may end mid-stream padding; what matters is one full cluster.
      out = inflateRawSync(input, {
        finishFlush: zlibConstants.Z_SYNC_FLUSH,
        maxOutputLength: this.clusterSize * 2,
      });
    } catch (err) {
      throw new CorruptError(
        `qcow2 compressed cluster at ${ext.host} in ${this.file.name} cannot be decompressed: ${(err as Error).message}`,
      );
    }
    if (out.length < this.clusterSize) {
      throw new CorruptError(
        `qcow2 compressed cluster at ${ext.host} in ${this.file.name} decompresses to ${out.length} bytes, not ${this.clusterSize}`,
      );
    }
    return out.length === this.clusterSize ? out : out.subarray(0, this.clusterSize);
  }

  /**
   * qemu stores one zstd frame followed by sector padding, and reads it back as exactly one cluster
   * (block/qcow2-threads.c). The frame is the guest's or the image's author's: one declaring any other
   * size, or expanding past a cluster, is corrupt, found out before more than a cluster is allocated.
   */
  private async decompressZstd(input: Buffer, ext: Extent): Promise<Buffer> {
    const what = `qcow2 compressed cluster at ${ext.host} (virtual offset ${ext.clusterStart}) in ${this.file.name}`;
    let frameLength: number;
    try {
      frameLength = zstdBinding.findFrameCompressedSize(input);
    } catch (err) {
      throw new CorruptError(`${what} is not a zstd frame: ${(err as Error).message}`);
    }
    return await decompressExactly(input.subarray(0, frameLength), this.clusterSize, what);
  }
}

/** Turns the L1 table into host offsets of L2 tables (0 = unallocated), checking each. */
async function readL1(file: ImageFile, h: Qcow2Header): Promise<Float64Array> {
  const clusterSize = 2 ** h.clusterBits;
  const raw = await file.readExact(h.l1Offset, h.l1Size * 8, 'qcow2 L1 table');
  const l1 = new Float64Array(h.l1Size);
  for (let i = 0; i < h.l1Size; i++) {
    const hi = raw.readUInt32BE(i * 8);
    const lo = raw.readUInt32BE(i * 8 + 4);
    const offset = (hi & 0x00ffffff) * TWO32 + ((lo & 0xfffffe00) >>> 0);
    if (offset !== 0 && (offset % clusterSize !== 0 || offset + clusterSize > file.size)) {
      throw new CorruptError(
        `qcow2 L1 entry ${i} of ${file.name} points to ${offset}, which is unaligned or past the end of the file`,
        { path: file.path, entry: i, offset },
      );
    }
    l1[i] = offset;
  }
  return l1;
}

export async function openQcow2(
  file: ImageFile,
  chain: ChainContext,
  openBacking: OpenBacking,
  detected = false,
): Promise<ImageSource> {
  const header = await readQcow2Header(file);
  if (detected && header.backingName)
    throw refuseDetected(file.name, 'qcow2', 'its qcow2 header names a backing file');
  const l1 = await readL1(file, header);
  let backing: ImageSource | null = null;
  if (header.backingName) {
    // qemu calls VHD 'vpc'; no format extension means "probe", as qemu does.
    const name = header.backingFormat === 'vpc' ? 'vhd' : header.backingFormat;
    const formats: readonly (string | null)[] = ['raw', 'qcow2', 'vhd', 'vmdk', 'vdi', null];
    if (!formats.includes(name))
      throw new InvalidInputError(`backing file format '${name}' of ${file.name} is not supported`);
    backing = await openBacking(
      resolveBackingPath(file.path, header.backingName),
      (name ?? undefined) as ContainerFormat | undefined,
      chain,
    );
  }
  return new MappedImage(file, 'qcow2', header.size, new Qcow2Mapper(file, header, l1), backing);
}
