import { inflateSync } from 'node:zlib';
import { LRUCache } from 'lru-cache';
import { CorruptError, InvalidInputError } from '../../common/errors.js';
import type { ImageSource } from '../source.js';
import { refuseDetected, resolveBackingPath } from './chain.js';
import { ConcatSource, type Part } from './concat-source.js';
import { ImageFile } from './image-file.js';
import { MAX_TOP_TABLE_BYTES, MAX_VIRTUAL_SIZE, SECTOR, TABLE_CACHE_BYTES } from './limits.js';
import { type BlockMapper, type Extent, MappedImage } from './mapped-image.js';
import { RawRangeSource } from './raw.js';
import { parseVmdkDescriptor, type VmdkDescriptor } from './vmdk-descriptor.js';

/**
 * VMDK reader: hosted sparse extents ('KDMV': monolithicSparse, twoGbMaxExtentSparse, streamOptimized with
 * deflate-compressed grains) and text descriptors listing FLAT / ZERO / SPARSE extents (monolithicFlat,
 * twoGbMaxExtentFlat). Delta disks with a parent and ESX-only types are refused by name.
 */
export const VMDK_MAGIC = 0x564d444b; // 'KDMV' little-endian
export const DESCRIPTOR_SIGNATURE = '# Disk DescriptorFile';
const FLAG_COMPRESSED = 1 << 16;
const FLAG_MARKERS = 1 << 17;
const GD_AT_END = 0xffffffffffffffffn;
const GTE_ZERO = 1;
const MAX_DESCRIPTOR_BYTES = 1024 * 1024;

interface SparseHeader {
  flags: number;
  capacity: number; // sectors
  grainSectors: number;
  descriptorOffset: number;
  descriptorSize: number;
  gtEntries: number;
  gdOffset: bigint;
  compressAlgorithm: number;
}

function parseSparseHeader(h: Buffer, file: ImageFile): SparseHeader {
  if (h.readUInt32LE(0) !== VMDK_MAGIC)
    throw new CorruptError(`${file.name} is not a VMDK sparse extent (bad magic)`);
  const version = h.readUInt32LE(4);
  if (version < 1 || version > 3)
    throw new InvalidInputError(`VMDK sparse version ${version} of ${file.name} is not supported`);
  const capacity = Number(h.readBigUInt64LE(12));
  const grainSectors = Number(h.readBigUInt64LE(20));
  return {
    flags: h.readUInt32LE(8),
    capacity,
    grainSectors,
    descriptorOffset: Number(h.readBigUInt64LE(28)),
    descriptorSize: Number(h.readBigUInt64LE(36)),
    gtEntries: h.readUInt32LE(44),
    gdOffset: h.readBigUInt64LE(56),
    compressAlgorithm: h.readUInt16LE(77),
  };
}

class VmdkSparseMapper implements BlockMapper {
  private readonly grainSize: number;
  private readonly tables: LRUCache<number, Uint32Array>;
  private readonly compressed: boolean;

  constructor(
    private readonly file: ImageFile,
    private readonly header: SparseHeader,
    private readonly gd: Uint32Array,
  ) {
    this.grainSize = header.grainSectors * SECTOR;
    this.compressed = (header.flags & FLAG_COMPRESSED) !== 0;
    this.tables = new LRUCache<number, Uint32Array>({
      maxSize: TABLE_CACHE_BYTES,
      sizeCalculation: (t) => t.byteLength,
    });
  }

  private async grainTable(sector: number): Promise<Uint32Array> {
    let table = this.tables.get(sector);
    if (!table) {
      const raw = await this.file.readExact(sector * SECTOR, this.header.gtEntries * 4, 'VMDK grain table');
      table = new Uint32Array(this.header.gtEntries);
      for (let i = 0; i < table.length; i++) table[i] = raw.readUInt32LE(i * 4);
      this.tables.set(sector, table);
    }
    return table;
  }

  async map(offset: number, _maxLength: number, out: Extent): Promise<void> {
    const grain = Math.floor(offset / this.grainSize);
    const within = offset - grain * this.grainSize;
    out.length = this.grainSize - within;
    const gtSector = this.gd[Math.floor(grain / this.header.gtEntries)];
    if (gtSector === 0) {
      out.kind = 'zero';
      return;
    }
    const entry = (await this.grainTable(gtSector))[grain % this.header.gtEntries];
    if (entry === 0 || entry === GTE_ZERO) {
      out.kind = 'zero';
      return;
    }
    const host = entry * SECTOR;
    if (host >= this.file.size)
      throw new CorruptError(
        `VMDK grain for virtual offset ${offset} points to ${host}, past the end of ${this.file.name}`,
        { path: this.file.path, offset, host },
      );
    if (this.compressed) {
      out.kind = 'compressed';
      out.host = host;
      out.clusterStart = grain * this.grainSize;
      return;
    }
    out.kind = 'data';
    out.host = host + within;
  }

  /** A compressed grain starts with a marker: LBA (u64) and compressed size (u32), then zlib data. */
  async decompress(ext: Extent): Promise<Buffer> {
    const marker = await this.file.readExact(ext.host, 12, 'VMDK grain marker');
    const length = marker.readUInt32LE(8);
    if (length === 0 || length > this.grainSize * 2 + 1024)
      throw new CorruptError(
        `VMDK compressed grain at ${ext.host} of ${this.file.name} has an absurd size ${length}`,
      );
    const data = await this.file.readExact(ext.host + 12, length, 'VMDK compressed grain');
    let out: Buffer;
    try {
      out = inflateSync(data, { maxOutputLength: this.grainSize * 2 });
    } catch (err) {
      throw new CorruptError(
        `VMDK compressed grain at ${ext.host} of ${this.file.name} cannot be decompressed: ${(err as Error).message}`,
      );
    }
    if (out.length >= this.grainSize) return out.subarray(0, this.grainSize);
    // The last grain of a disk whose size is not a grain multiple may be stored short.
    const full = Buffer.alloc(this.grainSize);
    out.copy(full);
    return full;
  }
}

function refuseUnsupported(desc: VmdkDescriptor, file: ImageFile): void {
  if (desc.hasParent)
    throw new InvalidInputError(
      `${file.name} is a VMDK delta disk with a parent, which diskvault does not support: consolidate it first`,
    );
}

/** Opens a hosted sparse extent ('KDMV') as a disk of its own. */
async function openSparseExtent(file: ImageFile, checkDescriptor: boolean): Promise<ImageSource> {
  if (file.size < 512) throw new CorruptError(`${file.name} is too short to be a VMDK sparse extent`);
  let header = parseSparseHeader(await file.readExact(0, 512, 'VMDK header'), file);
  if (header.gdOffset === GD_AT_END) {
    // streamOptimized: the real header is a footer copy, 1024 bytes from the end (before the end marker).
    if (file.size < 1536)
      throw new CorruptError(`stream-optimized VMDK ${file.name} is truncated (no footer)`);
    header = parseSparseHeader(await file.readExact(file.size - 1024, 512, 'VMDK footer'), file);
    if (header.gdOffset === GD_AT_END)
      throw new CorruptError(
        `stream-optimized VMDK ${file.name} has no grain directory offset in its footer`,
      );
  }
  if (checkDescriptor && header.descriptorOffset > 0 && header.descriptorSize > 0) {
    const bytes = Math.min(header.descriptorSize * SECTOR, MAX_DESCRIPTOR_BYTES);
    const text = (
      await file.readExact(header.descriptorOffset * SECTOR, bytes, 'VMDK embedded descriptor')
    ).toString('latin1');
    refuseUnsupported(parseVmdkDescriptor(text, file.name), file);
  }
  const { grainSectors, gtEntries, capacity } = header;
  if (grainSectors < 1 || grainSectors > 2048 || (grainSectors & (grainSectors - 1)) !== 0)
    throw new CorruptError(`VMDK grain size ${grainSectors} sectors of ${file.name} is out of range`);
  if (gtEntries < 1 || gtEntries > 65536)
    throw new CorruptError(`VMDK grain table size ${gtEntries} of ${file.name} is out of range`);
  if (capacity * SECTOR > MAX_VIRTUAL_SIZE)
    throw new InvalidInputError(`VMDK virtual size ${capacity * SECTOR} of ${file.name} exceeds 64 TiB`);
  if ((header.flags & FLAG_COMPRESSED) !== 0) {
    if (header.compressAlgorithm !== 1 || (header.flags & FLAG_MARKERS) === 0) {
      throw new InvalidInputError(
        `VMDK compression algorithm ${header.compressAlgorithm} of ${file.name} is not supported (deflate with grain markers is)`,
      );
    }
  }
  const gdEntries = Math.ceil(capacity / (grainSectors * gtEntries));
  if (gdEntries * 4 > MAX_TOP_TABLE_BYTES)
    throw new CorruptError(`VMDK grain directory of ${file.name} is absurdly large`);
  const gdOffset = Number(header.gdOffset) * SECTOR;
  const raw = await file.readExact(gdOffset, gdEntries * 4, 'VMDK grain directory');
  const gd = new Uint32Array(gdEntries);
  for (let i = 0; i < gdEntries; i++) {
    gd[i] = raw.readUInt32LE(i * 4);
    if (gd[i] !== 0 && gd[i] * SECTOR + gtEntries * 4 > file.size) {
      throw new CorruptError(
        `VMDK grain directory entry ${i} of ${file.name} points past the end of the file`,
        { path: file.path, entry: i },
      );
    }
  }
  return new MappedImage(file, 'vmdk', capacity * SECTOR, new VmdkSparseMapper(file, header, gd), null);
}

/** Opens a text descriptor and the extents it lists, relative to the descriptor's folder. */
async function openDescriptor(file: ImageFile, detected: boolean): Promise<ImageSource> {
  if (file.size > MAX_DESCRIPTOR_BYTES)
    throw new InvalidInputError(`VMDK descriptor ${file.name} is too large to be a descriptor`);
  const desc = parseVmdkDescriptor(
    (await file.readExact(0, file.size, 'VMDK descriptor')).toString('latin1'),
    file.name,
  );
  refuseUnsupported(desc, file);
  if (desc.extents.length === 0) throw new CorruptError(`VMDK descriptor ${file.name} lists no extents`);
  if (detected && desc.extents.some((ext) => ext.type !== 'ZERO'))
    throw refuseDetected(file.name, 'vmdk', 'it is a VMDK descriptor naming extent files');
  const parts: Part[] = [];
  let start = 0;
  try {
    for (const ext of desc.extents) {
      const size = ext.sectors * SECTOR;
      if (start + size > MAX_VIRTUAL_SIZE)
        throw new InvalidInputError(`VMDK ${file.name} is larger than 64 TiB`);
      if (ext.type === 'ZERO') {
        parts.push({ start, size, source: null });
      } else if (ext.type === 'FLAT' || ext.type === 'VMFS' || ext.type === 'SPARSE') {
        if (!ext.fileName)
          throw new CorruptError(`VMDK descriptor ${file.name} has a ${ext.type} extent without a file name`);
        const extentFile = await ImageFile.open(resolveBackingPath(file.path, ext.fileName));
        let source: ImageSource;
        try {
          if (ext.type === 'SPARSE') {
            source = await openSparseExtent(extentFile, false);
          } else {
            const base = ext.offsetSectors * SECTOR;
            if (base + size > extentFile.size)
              throw new CorruptError(
                `VMDK flat extent ${extentFile.name} is shorter (${extentFile.size} bytes) than the ${size} bytes its descriptor declares`,
              );
            source = new RawRangeSource(extentFile, 'vmdk', base, size);
          }
        } catch (err) {
          await extentFile.close();
          throw err;
        }
        parts.push({ start, size, source });
      } else {
        throw new InvalidInputError(
          `VMDK extent type ${ext.type} in ${file.name} is not supported (FLAT, SPARSE and ZERO are)`,
        );
      }
      start += size;
    }
  } catch (err) {
    for (const p of parts) await p.source?.close();
    throw err;
  } finally {
    await file.close();
  }
  return new ConcatSource('vmdk', parts);
}

export async function openVmdk(file: ImageFile, detected = false): Promise<ImageSource> {
  const head = await file.readExact(0, Math.min(file.size, 512), 'VMDK header');
  if (head.length >= 4 && head.readUInt32LE(0) === VMDK_MAGIC) return openSparseExtent(file, true);
  if (head.toString('latin1', 0, 4) === 'COWD')
    throw new InvalidInputError(`${file.name} is an ESX COWD sparse VMDK, which diskvault does not support`);
  if (head.toString('latin1').includes(DESCRIPTOR_SIGNATURE)) return openDescriptor(file, detected);
  throw new CorruptError(`${file.name} is neither a VMDK sparse extent nor a VMDK descriptor`);
}
