/** Bits per id in each filter segment: with 7 probes that is under 1% false "touched" per segment. */
const BITS_PER_ID = 10;
const PROBES = 7;
const FIRST_SEGMENT_IDS = 16_384;
/**
 * Beyond this many ids a set stops growing and reports itself saturated: 32 M ids is a 32 TiB image at the
 * default 1 MiB average chunk, and the filter then holds about 40 MiB. gc treats a saturated session as
 * holding every chunk its tenant owns, which is sound and only costs space until the session ends.
 */
export const MAX_TOUCHED_IDS = 32 * 1024 * 1024;

/**
 * The chunks one upload session was told are present or uploaded: what it may name in its commit, so what
 * gc must keep while it is open. A scalable Bloom filter over the ids (which are SHA-256 digests, so their
 * bytes serve as the hash functions): about 1.3 bytes an id, never a false "not touched"; a false "touched"
 * keeps a chunk until the session ends. Adding is a few bit writes, so the missing query stays cheap.
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
      seg = { bits: new Uint8Array((capacity * BITS_PER_ID) >>> 3), capacity, count: 0 };
      this.segments.push(seg);
    }
    const m = seg.bits.length * 8;
    for (let k = 0; k < PROBES; k++) {
      const bit = id.readUInt32LE(offset + k * 4) % m;
      seg.bits[bit >>> 3] |= 1 << (bit & 7);
    }
    seg.count++;
    this.total++;
  }

  /** True when the id at `id[offset..]` may have been added (always true once saturated). */
  has(id: Buffer, offset = 0): boolean {
    if (this.full) return true;
    for (const seg of this.segments) {
      const m = seg.bits.length * 8;
      let all = true;
      for (let k = 0; k < PROBES && all; k++) {
        const bit = id.readUInt32LE(offset + k * 4) % m;
        all = (seg.bits[bit >>> 3] & (1 << (bit & 7))) !== 0;
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
