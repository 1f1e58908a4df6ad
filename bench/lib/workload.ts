import { cachedExt4Nights } from '../../workloads/cache.js';
import { type Ext4NightsOptions, parseSize } from '../../workloads/ext4-nights.js';

/** The benchmark's workloads: the generated ext4 images (workloads/ext4-nights.ts) with seed 1. */
export function benchWorkload(nights: number, size: string): Ext4NightsOptions {
  return { nights, size: parseSize(size), seed: 1 };
}

/**
 * night0..night<nights> of the `size` workload, built once under `work` and reused by later runs (building
 * the 2 GiB set takes minutes); a set an older generator made is deleted once the new one is in place.
 */
export async function ensureWorkload(work: string, nights: number, size: string): Promise<string[]> {
  return cachedExt4Nights(work, benchWorkload(nights, size), {
    pruneStale: true,
    onBuild: (dir) => process.stderr.write(`building the ${size} workload in ${dir} (once)...\n`),
  });
}
