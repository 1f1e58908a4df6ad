import { access } from 'node:fs/promises';
import { LRUCache } from 'lru-cache';
import { CorruptError, InvalidInputError, NotFoundError } from '../../common/errors.js';
import type { ImageSource } from '../source.js';
import { type ChainContext, type OpenBacking, refuseDetected, resolveBackingPath } from './chain.js';
import type { ImageFile } from './image-file.js';
import { MAX_TOP_TABLE_BYTES, MAX_VIRTUAL_SIZE, SECTOR, TABLE_CACHE_BYTES } from './limits.js';
import { type BlockMapper, type Extent, MappedImage } from './mapped-image.js';
import { RawRangeSource } from './raw.js';

/**
 * VHD (Virtual PC / Hyper-V "vpc") reader: fixed (raw data + 512-byte footer), dynamic (footer copy, dynamic
 * header, BAT of 32-bit sector offsets, each block = sector bitmap + data) and differencing (a dynamic disk
 * whose bitmap says, sector by sector, whether the data is here or in the parent named by parent locators).
 */
export const VHD_COOKIE = 'conectix';
const TYPE_FIXED = 2;
const TYPE_DYNAMIC = 3;
const TYPE_DIFFERENCING = 4;
const UNALLOCATED = 0xffffffff;
const MAX_CHS_SECTORS = 65535 * 16 * 255;

export interface VhdFooter {
  type: number;
  size: number;
  dataOffset: number;
}

/** One's complement of the byte sum with the checksum field taken as zero. */
function vhdChecksum(buf: Buffer, checksumAt: number): number {
  let sum = 0;
  for (let i = 0; i < buf.length; i++) if (i < checksumAt || i >= checksumAt + 4) sum += buf[i];
  return ~sum >>> 0;
}

export function parseVhdFooter(buf: Buffer, file: ImageFile): VhdFooter {
  if (buf.toString('latin1', 0, 8) !== VHD_COOKIE)
    throw new CorruptError(`${file.name} has no VHD footer ('conectix' cookie missing)`);
  if (vhdChecksum(buf.subarray(0, 512), 64) !== buf.readUInt32BE(64))
    throw new CorruptError(`VHD footer checksum of ${file.name} does not match: the image is corrupt`);
  const type = buf.readUInt32BE(60);
  const currentSize = Number(buf.readBigUInt64BE(48));
  // qemu's rule (block/vpc.c): Virtual PC and old qemu size a disk by its CHS geometry, Hyper-V and newer
  // tools by current_size; a maxed-out geometry means the geometry cannot express the size.
  const creator = buf.toString('latin1', 28, 32);
  const chsSectors = buf.readUInt16BE(56) * buf[58] * buf[59];
  const useCurrentSize =
    ['win ', 'qem2', 'd2v ', 'CTXS', 'tap\0'].includes(creator) || chsSectors === MAX_CHS_SECTORS;
  const size = useCurrentSize ? currentSize : chsSectors * SECTOR;
  if (!Number.isSafeInteger(size) || size > MAX_VIRTUAL_SIZE)
    throw new InvalidInputError(`VHD virtual size ${currentSize} of ${file.name} exceeds 64 TiB`);
  const dataOffset = buf.readBigUInt64BE(16);
  return { type, size, dataOffset: dataOffset > BigInt(Number.MAX_SAFE_INTEGER) ? -1 : Number(dataOffset) };
}

interface DynamicHeader {
  batOffset: number;
  maxEntries: number;
  blockSize: number;
  parentName: string;
  locators: { code: string; offset: number; length: number }[];
}

async function readDynamicHeader(file: ImageFile, offset: number): Promise<DynamicHeader> {
  const h = await file.readExact(offset, 1024, 'VHD dynamic header');
  if (h.toString('latin1', 0, 8) !== 'cxsparse')
    throw new CorruptError(`VHD dynamic header of ${file.name} has a bad cookie`);
  if (vhdChecksum(h, 36) !== h.readUInt32BE(36))
    throw new CorruptError(
      `VHD dynamic header checksum of ${file.name} does not match: the image is corrupt`,
    );
  const batOffset = Number(h.readBigUInt64BE(16));
  const maxEntries = h.readUInt32BE(28);
  const blockSize = h.readUInt32BE(32);
  if (blockSize < SECTOR || blockSize > 256 * 1024 * 1024 || (blockSize & (blockSize - 1)) !== 0) {
    throw new CorruptError(`VHD block size ${blockSize} of ${file.name} is out of range`);
  }
  const nameBytes = h.subarray(64, 576);
  // UTF-16BE on disk: swap to LE for node's decoder.
  const parentName = Buffer.from(nameBytes).swap16().toString('utf16le').replace(/\0.*$/s, '');
  const locators = [];
  for (let i = 0; i < 8; i++) {
    const at = 576 + i * 24;
    const code = h.toString('latin1', at, at + 4);
    if (h.readUInt32BE(at) === 0) continue;
    locators.push({ code, length: h.readUInt32BE(at + 8), offset: Number(h.readBigUInt64BE(at + 16)) });
  }
  return { batOffset, maxEntries, blockSize, parentName, locators };
}

class VhdMapper implements BlockMapper {
  private readonly bitmapBytes: number;
  private readonly bitmaps: LRUCache<number, Buffer>;

  constructor(
    private readonly file: ImageFile,
    private readonly blockSize: number,
    private readonly bat: Uint32Array,
    private readonly differencing: boolean,
  ) {
    this.bitmapBytes = Math.ceil(blockSize / SECTOR / 8 / SECTOR) * SECTOR;
    this.bitmaps = new LRUCache<number, Buffer>({
      maxSize: TABLE_CACHE_BYTES,
      sizeCalculation: (b) => b.length,
    });
  }

  async map(offset: number, maxLength: number, out: Extent): Promise<void> {
    const block = Math.floor(offset / this.blockSize);
    const within = offset - block * this.blockSize;
    out.length = this.blockSize - within;
    const sector = this.bat[block];
    if (sector === UNALLOCATED) {
      out.kind = this.differencing ? 'backing' : 'zero';
      return;
    }
    const base = sector * SECTOR;
    if (base + this.bitmapBytes >= this.file.size) {
      throw new CorruptError(
        `VHD block ${block} of ${this.file.name} points to ${base}, past the end of the file`,
        { path: this.file.path, block },
      );
    }
    out.kind = 'data';
    out.host = base + this.bitmapBytes + within;
    if (!this.differencing) return; // qemu, too, ignores the bitmap of a disk without a parent
    let bitmap = this.bitmaps.get(base);
    if (!bitmap) {
      bitmap = await this.file.readExact(base, this.bitmapBytes, 'VHD sector bitmap');
      this.bitmaps.set(base, bitmap);
    }
    // The run of sectors sharing the first sector's bit (MSB first) decides here-or-parent.
    const first = Math.floor(within / SECTOR);
    const last = Math.min(this.blockSize / SECTOR, Math.ceil((within + maxLength) / SECTOR));
    const bit = (s: number) => (bitmap[s >>> 3] >>> (7 - (s & 7))) & 1;
    const here = bit(first);
    let s = first + 1;
    while (s < last && bit(s) === here) s++;
    out.length = s * SECTOR - within;
    if (!here) out.kind = 'backing';
  }
}

/** Candidate parent paths, best first: relative and absolute Windows locators, Mac URL, then the bare name. */
async function parentCandidates(file: ImageFile, header: DynamicHeader): Promise<string[]> {
  const names: string[] = [];
  const order = ['W2ru', 'W2ku', 'MacX'];
  const sorted = [...header.locators].sort((a, b) => order.indexOf(a.code) - order.indexOf(b.code));
  for (const loc of sorted) {
    if (!order.includes(loc.code) || loc.length === 0 || loc.length > 4096) continue;
    const raw = await file.readExact(loc.offset, loc.length, `VHD parent locator ${loc.code}`);
    let name =
      loc.code === 'MacX'
        ? decodeURIComponent(raw.toString('utf8').replace(/^file:\/\//, ''))
        : raw.toString('utf16le');
    name = name.replace(/\0+$/, '');
    if (loc.code !== 'MacX') name = name.replace(/^\.\\/, '').replace(/\\/g, '/');
    if (name) names.push(resolveBackingPath(file.path, name));
  }
  if (header.parentName) names.push(resolveBackingPath(file.path, header.parentName.replace(/\\/g, '/')));
  return names;
}

/**
 * The last sector of a raw disk is the guest's: a footer found there is believed only when it describes
 * the whole file (a fixed VHD: virtual size + 512 = file size). A dynamic disk, which always starts with a
 * copy of its footer, is believed only with that copy; a differencing disk would open its parent file.
 */
function refuseUntrustedFooter(
  file: ImageFile,
  footer: VhdFooter,
  atEnd: boolean,
  copyAtStart: boolean,
): void {
  if (footer.type === TYPE_DIFFERENCING)
    throw refuseDetected(file.name, 'vhd', 'it is a differencing VHD, which opens a parent file');
  if (footer.type === TYPE_FIXED && (!atEnd || footer.size + 512 !== file.size))
    throw refuseDetected(
      file.name,
      'vhd',
      atEnd
        ? `its last sector is a fixed VHD footer declaring ${footer.size} bytes, not the ${file.size - 512} before it`
        : 'it starts with a fixed VHD footer, which belongs at its end',
    );
  if (footer.type !== TYPE_FIXED && !copyAtStart)
    throw refuseDetected(
      file.name,
      'vhd',
      'its last sector is a dynamic VHD footer, without the copy a dynamic VHD starts with',
    );
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

export async function openVhd(
  file: ImageFile,
  chain: ChainContext,
  openBacking: OpenBacking,
  detected = false,
): Promise<ImageSource> {
  if (file.size < 512) throw new CorruptError(`${file.name} is too short to be a VHD image`);
  const tail = await file.readExact(file.size - 512, 512, 'VHD footer');
  const head = await file.readExact(0, 512, 'VHD footer copy');
  const footerAtEnd = tail.toString('latin1', 0, 8) === VHD_COOKIE;
  // A dynamic disk keeps a copy of the footer at offset 0; use it when the end is truncated or damaged.
  const footer = parseVhdFooter(footerAtEnd ? tail : head, file);
  if (detected)
    refuseUntrustedFooter(file, footer, footerAtEnd, head.toString('latin1', 0, 8) === VHD_COOKIE);
  if (footer.type === TYPE_FIXED) {
    if (footer.size + 512 > file.size)
      throw new CorruptError(
        `fixed VHD ${file.name} is shorter (${file.size} bytes) than its virtual size ${footer.size} plus footer`,
      );
    return new RawRangeSource(file, 'vhd', 0, footer.size);
  }
  if (footer.type !== TYPE_DYNAMIC && footer.type !== TYPE_DIFFERENCING)
    throw new InvalidInputError(`VHD disk type ${footer.type} of ${file.name} is not supported`);
  if (footer.dataOffset < 0) throw new CorruptError(`VHD dynamic header offset of ${file.name} is invalid`);
  const header = await readDynamicHeader(file, footer.dataOffset);
  const blocks = Math.ceil(footer.size / header.blockSize);
  if (header.maxEntries < blocks)
    throw new CorruptError(
      `VHD BAT of ${file.name} has ${header.maxEntries} entries but the virtual size needs ${blocks}`,
    );
  if (blocks * 4 > MAX_TOP_TABLE_BYTES) throw new CorruptError(`VHD BAT of ${file.name} is absurdly large`);
  const raw = await file.readExact(header.batOffset, blocks * 4, 'VHD block allocation table');
  const bat = new Uint32Array(blocks);
  for (let i = 0; i < blocks; i++) bat[i] = raw.readUInt32BE(i * 4);
  let backing: ImageSource | null = null;
  const differencing = footer.type === TYPE_DIFFERENCING;
  if (differencing) {
    const candidates = await parentCandidates(file, header);
    let parent: string | undefined;
    for (const c of candidates) {
      if (await exists(c)) {
        parent = c;
        break;
      }
    }
    if (!parent)
      throw new NotFoundError(
        `parent of differencing VHD ${file.name} not found (tried: ${candidates.join(', ') || 'no locator'})`,
      );
    backing = await openBacking(parent, 'vhd', chain);
  }
  return new MappedImage(
    file,
    'vhd',
    footer.size,
    new VhdMapper(file, header.blockSize, bat, differencing),
    backing,
  );
}
