import { type FileHandle, open } from 'node:fs/promises';
import type { ImageSource } from '../source.js';
import { deviceGeometry } from './block-device.js';

/**
 * A raw image in a regular file, or a block device: both are read with positional reads, so both are
 * seekable. The size comes from fstat for files and from sysfs for devices (fstat says 0 for a device).
 */
export class RawFileSource implements ImageSource {
  readonly seekable = true;
  readonly format = 'raw';

  private constructor(
    private readonly handle: FileHandle,
    readonly size: number,
    readonly sectorSize: number,
    readonly path: string,
  ) {}

  static async open(path: string): Promise<RawFileSource> {
    const handle = await open(path, 'r');
    try {
      const st = await handle.stat();
      if (st.isBlockDevice()) {
        const geometry = await deviceGeometry(st.rdev, path);
        return new RawFileSource(handle, geometry.size, geometry.sectorSize, path);
      }
      if (!st.isFile())
        throw Object.assign(new Error(`${path} is neither a regular file nor a block device`), {
          code: 'EINVAL',
        });
      // 512 is the unit a failing read is narrowed to; a file on a 4K-sector disk still fails per 512 safely.
      return new RawFileSource(handle, st.size, 512, path);
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  async read(buf: Buffer, offset: number): Promise<number> {
    let done = 0;
    while (done < buf.length && offset + done < this.size) {
      const want = Math.min(buf.length - done, this.size - (offset + done));
      const { bytesRead } = await this.handle.read(buf, done, want, offset + done);
      if (bytesRead === 0) break; // the file shrank under us: report what exists
      done += bytesRead;
    }
    return done;
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}
