import { type FileHandle, open } from 'node:fs/promises';
import { basename } from 'node:path';
import { CorruptError, InvalidInputError } from '../../common/errors.js';

/**
 * One open container file: positional reads that say which structure fell off the end of the file, so a
 * truncated image yields "qcow2 L2 table at 0x... lies past the end of disk.qcow2" instead of garbage.
 */
export class ImageFile {
  private constructor(
    readonly path: string,
    readonly handle: FileHandle,
    readonly size: number,
  ) {}

  static async open(path: string): Promise<ImageFile> {
    const handle = await open(path, 'r');
    try {
      const st = await handle.stat();
      if (st.isDirectory()) throw new InvalidInputError(`${path} is a directory, not a disk image`);
      return new ImageFile(path, handle, st.size);
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  get name(): string {
    return basename(this.path);
  }

  /** Reads exactly `length` bytes of a metadata structure, or throws Corrupt naming it. */
  async readExact(offset: number, length: number, what: string): Promise<Buffer> {
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + length > this.size) {
      throw new CorruptError(
        `${what} at offset ${offset} (${length} bytes) lies past the end of ${this.name} (${this.size} bytes): the image is truncated or corrupt`,
        { path: this.path, offset, length },
      );
    }
    const buf = Buffer.allocUnsafe(length);
    await this.readInto(buf, 0, length, offset);
    return buf;
  }

  /** Reads what the file holds of [offset, offset+length) into buf and zero-fills what lies past its end. */
  async readInto(buf: Uint8Array, at: number, length: number, offset: number): Promise<void> {
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.handle.read(buf, at + done, length - done, offset + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    if (done < length) buf.fill(0, at + done, at + length);
  }

  private closing: Promise<void> | null = null;

  /** Idempotent: an opener that fails half-way and its caller may both close the file. */
  close(): Promise<void> {
    this.closing ??= this.handle.close();
    return this.closing;
  }
}
