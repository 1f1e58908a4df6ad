import type { ImageSource } from '../source.js';
import type { ImageFile } from './image-file.js';
import { SECTOR } from './limits.js';

/**
 * A byte range of a file read as a disk: a raw backing file, a fixed VHD (data before its footer), a VMDK
 * flat extent. Bytes the range declares but the file lacks read as zeros, as qemu reads them.
 */
export class RawRangeSource implements ImageSource {
  readonly sectorSize = SECTOR;
  readonly seekable = true;

  constructor(
    private readonly file: ImageFile,
    readonly format: string,
    private readonly base: number,
    readonly size: number,
    private readonly ownsFile = true,
  ) {}

  async read(buf: Buffer, offset: number): Promise<number> {
    if (offset >= this.size) return 0;
    const length = Math.min(buf.length, this.size - offset);
    await this.file.readInto(buf, 0, length, this.base + offset);
    return length;
  }

  async close(): Promise<void> {
    if (this.ownsFile) await this.file.close();
  }
}
