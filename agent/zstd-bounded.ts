import { DecompressStream, decompress } from 'zstd-napi';
import zstdBinding from 'zstd-napi/binding.js';
import { CorruptError } from '../common/errors.js';

/**
 * Decompresses a zstd payload that must expand to exactly `rawLength` bytes. The frame's declared size is
 * checked before any memory is allocated, and a frame without one is streamed with a hard cap, so a hostile
 * or damaged payload can never make the agent allocate more than the chunk it asked for.
 */
export async function decompressExactly(payload: Buffer, rawLength: number, what: string): Promise<Buffer> {
  let declared: number | null;
  try {
    declared = zstdBinding.getFrameContentSize(payload);
  } catch (err) {
    throw new CorruptError(`${what}: not a zstd frame (${(err as Error).message})`);
  }
  if (declared !== null) {
    if (declared !== rawLength)
      throw new CorruptError(`${what}: zstd frame declares ${declared} bytes, expected ${rawLength}`);
    try {
      return decompress(payload);
    } catch (err) {
      throw new CorruptError(`${what}: zstd payload does not decompress (${(err as Error).message})`);
    }
  }
  return await streamWithCap(payload, rawLength, what);
}

function streamWithCap(payload: Buffer, rawLength: number, what: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let total = 0;
    const stream = new DecompressStream();
    stream.on('data', (b: Buffer) => {
      total += b.length;
      if (total > rawLength) {
        stream.destroy();
        reject(new CorruptError(`${what}: zstd payload expands beyond ${rawLength} bytes`));
        return;
      }
      parts.push(b);
    });
    stream.on('error', (err) =>
      reject(new CorruptError(`${what}: zstd payload does not decompress (${err.message})`)),
    );
    stream.on('end', () => {
      if (total !== rawLength)
        reject(new CorruptError(`${what}: zstd payload expands to ${total} bytes, expected ${rawLength}`));
      else resolve(Buffer.concat(parts, total));
    });
    stream.end(payload);
  });
}
