import { randomBytes } from 'node:crypto';
import test from 'ava';
import { SequentialReader } from '../../agent/restore/sequential-reader.js';

/** A source read in short reads, as a device or a pipe may answer. */
function readerOver(source: Buffer, blockSize: number): SequentialReader {
  return new SequentialReader(
    async (buf, offset) =>
      source.copy(buf, 0, offset, Math.min(source.length, offset + 37, offset + buf.length)),
    source.length,
    blockSize,
  );
}

test('pieces of any length, within a block or across several, are the source bytes in order', async (t) => {
  const source = randomBytes(5000);
  const reader = readerOver(source, 256);
  const lengths = [1, 100, 155, 256, 700, 3, 1024, 511, 2250];
  let at = 0;
  for (const length of lengths) {
    // Copied at once: a piece is valid only until the next take (spanning pieces share one buffer).
    const piece = Buffer.from(await reader.take(length));
    t.deepEqual(piece, source.subarray(at, at + length), `piece at ${at}, ${length} bytes`);
    at += length;
  }
  t.is(at, source.length);
});

test('a piece that runs past the end is padded with zeros', async (t) => {
  const source = randomBytes(1000);
  const reader = readerOver(source, 128);
  t.deepEqual(Buffer.from(await reader.take(900)), source.subarray(0, 900));
  const tail = Buffer.from(await reader.take(300));
  t.deepEqual(tail.subarray(0, 100), source.subarray(900));
  t.true(tail.subarray(100).every((b) => b === 0));
});
