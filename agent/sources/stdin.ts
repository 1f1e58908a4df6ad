import type { Readable } from 'node:stream';
import { InvalidInputError } from '../../common/errors.js';
import type { ImageSource } from '../source.js';

/**
 * An image piped in (`diskvault backup -`): size unknown, read once, front to back. A read at any offset
 * other than the one following the previous read is a programming error, because the bytes are gone.
 */
export class StreamSource implements ImageSource {
  readonly size = null;
  readonly sectorSize = 512;
  readonly format = 'raw';
  readonly seekable = false;
  private position = 0;
  private pending: Buffer = Buffer.alloc(0);
  private ended = false;
  private readonly iterator: AsyncIterator<Buffer | string>;

  constructor(private readonly stream: Readable) {
    this.iterator = stream[Symbol.asyncIterator]();
  }

  async read(buf: Buffer, offset: number): Promise<number> {
    if (offset !== this.position) {
      throw new InvalidInputError(
        `a piped image can only be read in order (asked for ${offset}, at ${this.position})`,
      );
    }
    let done = 0;
    while (done < buf.length) {
      if (this.pending.length === 0) {
        if (this.ended) break;
        const next = await this.iterator.next();
        if (next.done) {
          this.ended = true;
          break;
        }
        this.pending = typeof next.value === 'string' ? Buffer.from(next.value) : next.value;
      }
      const n = this.pending.copy(buf, done);
      this.pending = this.pending.subarray(n);
      done += n;
    }
    this.position += done;
    return done;
  }

  async close(): Promise<void> {
    this.stream.destroy();
  }
}
