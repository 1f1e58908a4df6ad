/** Bits per id in each filter segment (at least): with 8 probes, the 8 words of an id, about 0.06% false "touched". */
const BITS_PER_ID = 14;
const PROBES = 8;
const FIRST_SEGMENT_IDS = 16_384;
/**
 * Beyond this many ids a set stops growing and reports itself saturated: 32 M ids is a 32 TiB image at the
 * default 1 MiB average chunk, and the filter then holds about 64 MiB. gc treats a saturated session as
 * holding every chunk its tenant owns, which is sound and only costs space until the session ends.
 */
export const MAX_TOUCHED_IDS = 32 * 1024 * 1024;

/**
 * The chunks one upload session was told are present or uploaded: what it may name in its commit, so what
 * gc must keep while it is open. A scalable Bloom filter over the ids (which are SHA-256 digests, so their
 * bytes serve as the hash functions): about 2 bytes an id, under 1% false "touched" over all segments, never
 * a false "not touched"; a false "touched" keeps a chunk until the session ends. Adding is eight bit writes
 * (about 50 ns), so the missing query stays cheap.
 */
export class TouchedSet {
  private readonly segments: { bits: Uint8Array; capacity: number; count: number }[] = [];
  private total = 0;
  private full = false;

  constructor(private readonly maxIds = MAX_TOUCHED_IDS) {}

  /** Records the 32-byte id at `id[offset..]`. */
  add(id: Buffer, offset = 0): void {
    if (this.full) return;
    if (this.total >= this.maxIds) {
      this.full = true;
      this.segments.length = 0;
      return;
    }
    let seg = this.segments[this.segments.length - 1];
    if (!seg || seg.count >= seg.capacity) {
      const capacity = seg ? seg.capacity * 2 : FIRST_SEGMENT_IDS;
      // A power of two of bits, so a probe is a mask rather than a division.
      let bits = 1024;
      while (bits < capacity * BITS_PER_ID) bits *= 2;
      seg = { bits: new Uint8Array(bits >>> 3), capacity, count: 0 };
      this.segments.push(seg);
    }
    const mask = seg.bits.length * 8 - 1;
    const bitsOf = seg.bits;
    for (let k = 0, o = offset; k < PROBES; k++, o += 4) {
      const bit = (id[o] | (id[o + 1] << 8) | (id[o + 2] << 16) | (id[o + 3] << 24)) & mask;
      bitsOf[bit >>> 3] |= 1 << (bit & 7);
    }
    seg.count++;
    this.total++;
  }

  /** True when the id at `id[offset..]` may have been added (always true once saturated). */
  has(id: Buffer, offset = 0): boolean {
    if (this.full) return true;
    for (const seg of this.segments) {
      const mask = seg.bits.length * 8 - 1;
      const bitsOf = seg.bits;
      let all = true;
      for (let k = 0, o = offset; k < PROBES && all; k++, o += 4) {
        const bit = (id[o] | (id[o + 1] << 8) | (id[o + 2] << 16) | (id[o + 3] << 24)) & mask;
        all = (bitsOf[bit >>> 3] & (1 << (bit & 7))) !== 0;
      }
      if (all) return true;
    }
    return false;
  }

  /** True once more ids were added than the set tracks one by one. */
  get saturated(): boolean {
    return this.full;
  }

  /** Ids added (up to saturation). */
  get size(): number {
    return this.total;
  }

  /** Bytes of filter held. */
  get bytes(): number {
    return this.segments.reduce((n, s) => n + s.bits.length, 0);
  }
}
