import { createCipheriv, createHash } from 'node:crypto';

/**
 * Seeded randomness for the workload generator: everything the images hold derives from one seed and a label
 * naming what is being made, so a build is reproducible and one file's bytes do not depend on the order the
 * others were made in.
 */
export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number | string, label: string) {
    const h = createHash('sha256').update(`${seed}\0${label}`).digest();
    this.a = h.readUInt32LE(0);
    this.b = h.readUInt32LE(4);
    this.c = h.readUInt32LE(8);
    this.d = h.readUInt32LE(12) | 1;
  }

  /** sfc32: a small, fast generator with good statistical quality; 32 random bits. */
  nextU32(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return t >>> 0;
  }

  /** Uniform in [0, 1). */
  next(): number {
    return this.nextU32() / 4294967296;
  }

  /** Uniform integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }

  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)];
  }

  chance(p: number): boolean {
    return this.next() < p;
  }

  /** Log-normal around `median` (file sizes are), clamped to [min, max]. */
  logNormal(median: number, sigma: number, min: number, max: number): number {
    const u = Math.max(this.next(), 1e-12);
    const v = this.next();
    const z = Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
    return Math.round(Math.min(max, Math.max(min, median * Math.exp(sigma * z))));
  }

  /** Zipf-like index into a list of n (rank 0 most frequent), as word frequencies in text are. */
  zipf(n: number): number {
    return Math.min(n - 1, Math.floor(n ** this.next()) - 1);
  }

  /** `k` distinct items of `items`, in a seeded order. */
  sample<T>(items: readonly T[], k: number): T[] {
    const copy = items.slice();
    const out: T[] = [];
    for (let i = 0; i < k && copy.length > 0; i++) {
      const j = Math.floor(this.next() * copy.length);
      out.push(copy[j]);
      copy[j] = copy[copy.length - 1];
      copy.pop();
    }
    return out;
  }
}

/**
 * `length` incompressible bytes for (seed, label): an AES-128-CTR keystream, used here only as a fast
 * deterministic source of noise (the bytes of photos, archives, encrypted blobs), never as protection.
 */
export function noise(seed: number | string, label: string, length: number): Buffer {
  const key = createHash('sha256').update(`${seed}\0noise\0${label}`).digest();
  const cipher = createCipheriv('aes-128-ctr', key.subarray(0, 16), key.subarray(16, 32));
  return cipher.update(Buffer.alloc(length));
}
