import { CorruptError, InvalidInputError } from '../../common/errors.js';
import type { ImageSource } from '../source.js';
import type { ImageFile } from './image-file.js';
import { MAX_TOP_TABLE_BYTES, MAX_VIRTUAL_SIZE, SECTOR } from './limits.js';
import { type BlockMapper, type Extent, MappedImage } from './mapped-image.js';

/**
 * VirtualBox VDI reader (v1.1 header; dynamic "normal" and fixed images). A block map of 32-bit indexes
 * says which stored block holds each virtual block; all-ones means never written, all-ones-minus-one
 * means discarded: both read as zeros. Differencing and undo images need their parent by UUID: refused.
 */
export const VDI_SIGNATURE = 0xbeda107f;
const TYPE_NORMAL = 1;
const TYPE_FIXED = 2;
const BLOCK_FREE = 0xfffffffe; // and 0xffffffff: both mean "no data"

class VdiMapper implements BlockMapper {
  constructor(
    private readonly file: ImageFile,
    private readonly blockSize: number,
    private readonly blockExtra: number,
    private readonly dataOffset: number,
    private readonly map32: Uint32Array,
  ) {}

  async map(offset: number, _maxLength: number, out: Extent): Promise<void> {
    const block = Math.floor(offset / this.blockSize);
    const within = offset - block * this.blockSize;
    out.length = this.blockSize - within;
    const index = this.map32[block];
    if (index >= BLOCK_FREE) {
      out.kind = 'zero';
      return;
    }
    const host = this.dataOffset + index * (this.blockSize + this.blockExtra) + this.blockExtra;
    if (host >= this.file.size)
      throw new CorruptError(
        `VDI block ${block} of ${this.file.name} points to ${host}, past the end of the file`,
        { path: this.file.path, block },
      );
    out.kind = 'data';
    out.host = host + within;
  }
}

export async function openVdi(file: ImageFile): Promise<ImageSource> {
  const h = await file.readExact(0, Math.min(file.size, 512), 'VDI header');
  if (h.length < 400 || h.readUInt32LE(64) !== VDI_SIGNATURE)
    throw new CorruptError(`${file.name} is not a VDI image (header too short or bad signature)`);
  const version = h.readUInt32LE(68);
  if (version >>> 16 !== 1)
    throw new InvalidInputError(
      `VDI version ${version >>> 16}.${version & 0xffff} of ${file.name} is not supported (1.x is)`,
    );
  const type = h.readUInt32LE(76);
  if (type !== TYPE_NORMAL && type !== TYPE_FIXED) {
    throw new InvalidInputError(
      `VDI image type ${type} of ${file.name} (${type === 4 ? 'differencing' : type === 3 ? 'undo' : 'unknown'}) is not supported: only dynamic and fixed images are`,
    );
  }
  const mapOffset = h.readUInt32LE(340);
  const dataOffset = h.readUInt32LE(344);
  const sectorSize = h.readUInt32LE(360);
  const size = Number(h.readBigUInt64LE(368));
  const blockSize = h.readUInt32LE(376);
  const blockExtra = h.readUInt32LE(380);
  const blocks = h.readUInt32LE(384);
  if (sectorSize !== SECTOR)
    throw new InvalidInputError(`VDI sector size ${sectorSize} of ${file.name} is not supported`);
  if (size > MAX_VIRTUAL_SIZE)
    throw new InvalidInputError(`VDI virtual size ${size} of ${file.name} exceeds 64 TiB`);
  if (blockSize < SECTOR || blockSize > 64 * 1024 * 1024 || (blockSize & (blockSize - 1)) !== 0)
    throw new CorruptError(`VDI block size ${blockSize} of ${file.name} is out of range`);
  if (blockExtra > blockSize)
    throw new CorruptError(`VDI block extra data ${blockExtra} of ${file.name} is out of range`);
  const need = Math.ceil(size / blockSize);
  if (blocks < need)
    throw new CorruptError(
      `VDI block map of ${file.name} has ${blocks} entries but the virtual size needs ${need}`,
    );
  if (need * 4 > MAX_TOP_TABLE_BYTES)
    throw new CorruptError(`VDI block map of ${file.name} is absurdly large`);
  const raw = await file.readExact(mapOffset, need * 4, 'VDI block map');
  const map32 = new Uint32Array(need);
  for (let i = 0; i < need; i++) map32[i] = raw.readUInt32LE(i * 4);
  return new MappedImage(
    file,
    'vdi',
    size,
    new VdiMapper(file, blockSize, blockExtra, dataOffset, map32),
    null,
  );
}
