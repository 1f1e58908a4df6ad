/**
 * A compact set of 64-hex chunk names, for the questions gc and reindex ask of an encrypted repository's
 * listing ("does the index know this name?"), whose keyed names cannot be turned back into ids. Holds the
 * first 8 bytes of each name in a sorted BigUint64Array (16 MB for two million chunks, where a Set of
 * strings took over 200 MB); two names sharing 8 bytes are one in 2^64 per pair, and then `has` answers
 * yes for both, which gc reads as "keep".
 */
export class ChunkNameSet {
  private readonly prefixes: BigUint64Array;

  constructor(names: Iterable<string>) {
    const out: bigint[] = [];
    for (const n of names) out.push(prefixOf(n));
    this.prefixes = BigUint64Array.from(out).sort();
  }

  has(name: string): boolean {
    const want = prefixOf(name);
    let lo = 0;
    let hi = this.prefixes.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const v = this.prefixes[mid] as bigint;
      if (v === want) return true;
      if (v < want) lo = mid + 1;
      else hi = mid - 1;
    }
    return false;
  }
}

function prefixOf(name: string): bigint {
  return BigInt(`0x${name.slice(0, 16)}`);
}
