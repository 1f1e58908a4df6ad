import { fstat, read } from 'node:fs';
import { promisify } from 'node:util';
import { InvalidInputError } from '../../common/errors.js';
import type { ImageSource } from '../source.js';

const readAsync = promisify(read);
const fstatAsync = promisify(fstat);

/**
 * Standard input when it is a regular file or a block device (`diskvault backup - < disk.img`): read from
 * where the descriptor stands, front to back, straight into the caller's buffer. A stream over the same
 * descriptor hands over 64 KiB pieces in fresh memory, each copied into the window again (a 2 GiB image
 * cost about 2 s more CPU that way). Like a pipe it is read once, in order: the descriptor's position may
 * not be 0 and is not known, so the size is not known either, and nothing is read twice.
 */
export class StdinFileSource implements ImageSource {
  readonly size = null;
  readonly sectorSize = 512;
  readonly format = 'raw';
  readonly seekable = false;
  private position = 0;
  private ended = false;

  constructor(private readonly fd: number) {}

  /** The source for descriptor `fd` if it is a regular file or a block device, else null (a pipe, a tty). */
  static async open(fd: number): Promise<StdinFileSource | null> {
    const st = await fstatAsync(fd).catch(() => null);
    return st && (st.isFile() || st.isBlockDevice()) ? new StdinFileSource(fd) : null;
  }

  async read(buf: Buffer, offset: number): Promise<number> {
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
