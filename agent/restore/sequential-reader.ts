/**
 * Reads an existing target front to back in large blocks, one block read ahead, and hands out consecutive
 * pieces of any length: an in-place restore compares the target chunk by chunk, and large sequential reads
 * are what make that as fast as reading the disk. Past the target's end it yields zeros.
 *
 * Two block buffers take turns (fresh 16 MiB buffers would cost a page fault per 4 KiB), so a piece that
 * `take` returns is valid only until the next `take`: hash it or copy it before asking for more.
 */
export class SequentialReader {
  private block: Buffer = Buffer.alloc(0);
  private at = 0;
  private blockOffset = 0;
  private nextOffset = 0;
  private pending: Promise<Buffer> | undefined;
  private readonly spare: Buffer[] = [];
  /** Where a piece that spans two blocks is put together: one buffer, reused, under the same contract. */
  private spanning: Buffer = Buffer.alloc(0);

  constructor(
    private readonly read: (buf: Buffer, offset: number) => Promise<number>,
    private readonly size: number,
    private readonly blockSize = 16 * 1024 * 1024,
  ) {}

  private startRead(): Promise<Buffer> {
    const offset = this.nextOffset;
    const len = Math.min(this.blockSize, this.size - offset);
    this.nextOffset += len;
    const buf = (this.spare.pop() ?? Buffer.allocUnsafe(this.blockSize)).subarray(0, len);
    return (async () => {
      let got = 0;
      while (got < len) {
        const n = await this.read(got === 0 ? buf : buf.subarray(got), offset + got);
        if (n === 0) {
          buf.fill(0, got);
          break;
        }
        got += n;
      }
      return buf;
    })();
  }

  private async advance(): Promise<void> {
    this.blockOffset += this.block.length;
    // The caller is done with the old block (see the class comment): it takes the next read.
    if (this.block.buffer.byteLength === this.blockSize)
      this.spare.push(Buffer.from(this.block.buffer, this.block.byteOffset, this.blockSize));
    this.block = await (this.pending ?? this.startRead());
    this.at = 0;
    this.pending = this.nextOffset < this.size ? this.startRead() : undefined;
    // A rejected read-ahead is reported by the next advance(); never as an unhandled rejection.
    this.pending?.catch(() => {});
  }

  /** The next `length` bytes: a view into the current block when it fits, else into a reused buffer. */
  async take(length: number): Promise<Buffer> {
    if (this.at === this.block.length) await this.advance();
    if (this.block.length - this.at >= length) {
      const out = this.block.subarray(this.at, this.at + length);
      this.at += length;
      return out;
    }
    if (this.spanning.length < length) this.spanning = Buffer.allocUnsafe(length);
    const out = this.spanning.subarray(0, length);
    let filled = 0;
    while (filled < length) {
      if (this.at === this.block.length) {
        if (this.blockOffset + this.block.length >= this.size) {
          out.fill(0, filled);
          break;
        }
        await this.advance();
      }
      const n = Math.min(length - filled, this.block.length - this.at);
      this.block.copy(out, filled, this.at, this.at + n);
      this.at += n;
      filled += n;
    }
    return out;
  }
}
