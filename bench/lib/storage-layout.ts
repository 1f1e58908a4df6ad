import { createHash } from 'node:crypto';

/** The pack size `npm run bench:storage-layout` compares one object per chunk against. */
export const PACK_BYTES = 16 * 1024 * 1024;

/**
 * Object sizes spread evenly over a quarter to 1.75 times the mean (by default 160 KiB .. 1.1 MiB, as night0's
 * stored chunks) and names as the repository's chunk names look (64 hex digits); the same for every mode and
 * round.
 */
export function workloadOf(objects: number, meanKiB: number): { names: string[]; sizes: number[] } {
  const low = (meanKiB * 1024) / 4;
  const spread = (meanKiB * 1024 * 3) / 2;
  const names: string[] = [];
  const sizes: number[] = [];
  for (let i = 0; i < objects; i++) {
    const digest = createHash('sha256').update(`storage-layout ${i}`).digest();
    names.push(digest.toString('hex'));
    sizes.push(Math.round(low + (digest.readUInt32BE(0) / 2 ** 32) * spread));
  }
  return { names, sizes };
}

/** Indexes of consecutive objects joined into packs of at least `packBytes` (the last one may be smaller). */
export function packsOf(sizes: number[], packBytes = PACK_BYTES): number[][] {
  const packs: number[][] = [];
  let current: number[] = [];
  let bytes = 0;
  sizes.forEach((size, i) => {
    current.push(i);
    bytes += size;
    if (bytes >= packBytes) {
      packs.push(current);
      current = [];
      bytes = 0;
    }
  });
  if (current.length > 0) packs.push(current);
  return packs;
}
