/**
 * A set of chunk ids that costs at most 32 bytes an id (16-byte keys, open addressing, load ≤ 1/2) instead of
 * the ~150 bytes of a hex string in a Set: a 2 TiB disk's two million ids fit in 64 MiB.
 *
 * Only the first 16 bytes of each id are kept. A false "known" from two ids sharing 128 bits is harmless
 * anyway: the server's commit check names any chunk it lacks and the agent uploads it then.
 */
const KEY = 16;

export class IdSet {
  private table: Buffer;
  private capacity: number;
  private count = 0;
  /** An id whose first 16 bytes are all zero looks like an empty slot; such an id is tracked by this flag. */
  private hasZeroKey = false;

  constructor(expected = 1024) {
    this.capacity = 1 << Math.max(4, Math.ceil(Math.log2(expected * 2)));
    this.table = Buffer.alloc(this.capacity * KEY);
  }

  get size(): number {
    return this.count;
  }

  /** `id` is a raw id (32 bytes, or at least 16) or a view of one at `at` inside a larger buffer. */
  has(id: Uint8Array, at = 0): boolean {
    if (isZeroKey(id, at)) return this.hasZeroKey;
    return this.probe(id, at) < 0;
  }

  /** Adds the id; returns false when it was already present. */
  add(id: Uint8Array, at = 0): boolean {
    if (isZeroKey(id, at)) {
      if (this.hasZeroKey) return false;
      this.hasZeroKey = true;
      this.count++;
      return true;
    }
    if ((this.count + 1) * 2 > this.capacity) this.grow();
    const slot = this.probe(id, at);
    if (slot < 0) return false;
    this.table.set(id.subarray(at, at + KEY), slot * KEY);
    this.count++;
    return true;
  }

  /** The empty slot where the id belongs, or -1 when it is present. */
  private probe(id: Uint8Array, at: number): number {
    const mask = this.capacity - 1;
    const t = this.table;
    let i = ((id[at] | (id[at + 1] << 8) | (id[at + 2] << 16) | (id[at + 3] << 24)) >>> 0) & mask;
    for (;;) {
      const base = i * KEY;
      if (isZeroKey(t, base)) return i;
      let same = true;
      for (let k = 0; k < KEY; k++) {
        if (t[base + k] !== id[at + k]) {
          same = false;
          break;
        }
      }
      if (same) return -1;
      i = (i + 1) & mask;
    }
  }

  private grow(): void {
    const old = this.table;
    const oldCapacity = this.capacity;
    this.capacity *= 2;
    this.table = Buffer.alloc(this.capacity * KEY);
    for (let i = 0; i < oldCapacity; i++) {
      const base = i * KEY;
      if (!isZeroKey(old, base)) this.table.set(old.subarray(base, base + KEY), this.probe(old, base) * KEY);
    }
  }
}

function isZeroKey(b: Uint8Array, at: number): boolean {
  for (let k = 0; k < KEY; k++) if (b[at + k] !== 0) return false;
  return true;
}
