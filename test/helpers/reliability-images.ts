import { createCipheriv, createHash } from 'node:crypto';
import { once } from 'node:events';
import { createWriteStream } from 'node:fs';

/**
 * Small synthetic disk images for the fault tests: fast to build and back up, yet shaped like a disk
 * (incompressible data, runs of zeros, repeated blocks that dedup inside one image). Night N differs from
 * the base image in about `changePercent` of its 1 MiB blocks, so a second backup uploads only a little.
 */
const MiB = 1024 * 1024;

/** Deterministic, fast pseudo-random bytes: AES-CTR over zeros keyed by the seed. */
export function pseudoRandom(seed: string, length: number): Buffer {
  const key = createHash('sha256').update(seed).digest();
  const cipher = createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  return cipher.update(Buffer.alloc(length));
}

function pick(seed: string, modulo: number): number {
  return createHash('sha256').update(seed).digest().readUInt32BE(0) % modulo;
}

/** The bytes of block `i` of image `seed` as it looks on `night`. */
export function imageBlock(seed: string, i: number, night: number, changePercent: number): Buffer {
  // A changed block takes new random content; which blocks change depends on the night, like a real disk.
  for (let n = night; n >= 1; n--) {
    if (pick(`${seed}/change/${n}/${i}`, 100) < changePercent) return pseudoRandom(`${seed}/${n}/${i}`, MiB);
  }
  const kind = pick(`${seed}/kind/${i}`, 10);
  if (kind < 2) return Buffer.alloc(MiB);
  // Repeated content: the same block at several places of the disk (and of other seeds' disks).
  if (kind < 4) return pseudoRandom(`shared-block/${kind}`, MiB);
  return pseudoRandom(`${seed}/0/${i}`, MiB);
}

/** Writes a `sizeMiB` image and returns its SHA-256. */
export async function writeImage(
  path: string,
  opts: { seed: string; sizeMiB: number; night?: number; changePercent?: number },
): Promise<string> {
  const out = createWriteStream(path);
  const hash = createHash('sha256');
  for (let i = 0; i < opts.sizeMiB; i++) {
    const block = imageBlock(opts.seed, i, opts.night ?? 0, opts.changePercent ?? 5);
    hash.update(block);
    if (!out.write(block)) await once(out, 'drain');
  }
  out.end();
  await once(out, 'close');
  return hash.digest('hex');
}
