import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cachedExt4Nights } from '../../workloads/cache.js';

/**
 * night0..night3 of the 256 MiB generated ext4 workload (workloads/ext4-nights.ts, seed 1), built once and
 * cached under os.tmpdir()/diskvault-test-workload/, so a test run builds it once for every file that uses it.
 */
export async function workload256M(): Promise<string[]> {
  return cachedExt4Nights(join(tmpdir(), 'diskvault-test-workload'), {
    size: 256 * 2 ** 20,
    nights: 3,
    seed: 1,
  });
}
