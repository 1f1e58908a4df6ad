import { fstat, read } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { InvalidInputError } from '../../common/errors.js';
import type { ImageSource } from '../source.js';
import { deviceGeometry } from './block-device.js';

const readAsync = promisify(read);
const fstatAsync = promisify(fstat);

/**
 * Standard input when it is a regular file or a block device (`diskvault backup - < disk.img`), read
 * straight into the caller's buffer: a stream over the same descriptor hands over 64 KiB pieces in fresh
 * memory, each copied into the window again (a 2 GiB image cost about 2 s more CPU that way).
 *
 * The image is what follows the descriptor's position when the backup starts. Where the kernel tells that
 * position (/proc/self/fdinfo), the image's size is known and it is read with positional reads, so it can be
 * read again (a chunk the server lost since) and is cut exactly as the same bytes named as a file; the
 * descriptor's position is left where it was. Otherwise it is read once, in order, like a pipe.
 */
export class StdinFileSource implements ImageSource {
  readonly format = 'raw';
  private position = 0;
  private ended = false;

  private constructor(
    private readonly fd: number,
    /** Where the image starts in the file, or null when unknown (then it is read in order from the descriptor). */
    private readonly start: number | null,
    readonly size: number | null,
    readonly sectorSize: number,
  ) {}

  get seekable(): boolean {
    return this.start !== null;
  }

  /** The source for descriptor `fd` if it is a regular file or a block device, else null (a pipe, a tty). */
  static async open(fd: number): Promise<StdinFileSource | null> {
    const st = await fstatAsync(fd).catch(() => null);
    if (!st || !(st.isFile() || st.isBlockDevice())) return null;
    const start = await descriptorPosition(fd);
    const geometry = st.isBlockDevice()
      ? await deviceGeometry(st.rdev, '(standard input)')
      : { size: st.size, sectorSize: 512 };
    const size = start === null ? null : Math.max(0, geometry.size - start);
    return new StdinFileSource(fd, start, size, geometry.sectorSize);
  }

  async read(buf: Buffer, offset: number): Promise<number> {
    if (this.start !== null && this.size !== null) {
      let done = 0;
      while (done < buf.length && offset + done < this.size) {
        const want = Math.min(buf.length - done, this.size - (offset + done));
        const { bytesRead } = await readAsync(this.fd, buf, done, want, this.start + offset + done);
        if (bytesRead === 0) break; // the file shrank under us: report what exists
        done += bytesRead;
      }
      return done;
    }
    if (offset !== this.position) {
      throw new InvalidInputError(
        `a piped image can only be read in order (asked for ${offset}, at ${this.position})`,
      );
    }
    let done = 0;
    while (done < buf.length && !this.ended) {
      // position null: from the descriptor's own position, which each read moves on
      const { bytesRead } = await readAsync(this.fd, buf, done, buf.length - done, null);
      if (bytesRead === 0) this.ended = true;
      done += bytesRead;
    }
    this.position += done;
    return done;
  }

  /** The descriptor is the process's standard input: it stays open. */
  async close(): Promise<void> {}
}

/** The descriptor's file position from /proc/self/fdinfo (Linux), or null where that cannot be read. */
async function descriptorPosition(fd: number): Promise<number | null> {
  try {
    const match = /^pos:\s*(\d+)$/m.exec(await readFile(`/proc/self/fdinfo/${fd}`, 'utf8'));
    const pos = match ? Number(match[1]) : Number.NaN;
    return Number.isSafeInteger(pos) ? pos : null;
  } catch {
    return null;
  }
}
