import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const SCRIPT_BESIDE_ROOT = resolve(root, '../shared/workloads/make-ext4-nights.sh');
/** The shared folder sits beside the project root; a checkout elsewhere falls back to the workplace's copy. */
export const WORKLOAD_SCRIPT = [SCRIPT_BESIDE_ROOT, '/work/shared/workloads/make-ext4-nights.sh'].find((p) =>
  existsSync(p),
);

/**
 * The shared workload: ext4 images of real files with nights of changes. Built once into `dir` and reused
 * by later runs (building the 2 GiB set takes minutes; the images never change for a given script).
 */
export function ensureWorkload(dir: string, nights: number, size: string): string[] {
  const images = Array.from({ length: nights + 1 }, (_, n) => join(dir, `night${n}.img`));
  if (images.every((p) => existsSync(p))) return images;
  if (!WORKLOAD_SCRIPT) throw new Error(`the workload script is missing: expected ${SCRIPT_BESIDE_ROOT}`);
  const building = `${dir}.building`;
  rmSync(building, { recursive: true, force: true });
  mkdirSync(dirname(dir), { recursive: true });
  process.stderr.write(`building the ${size} workload in ${dir} (once)...\n`);
  execFileSync('bash', [WORKLOAD_SCRIPT, building, String(nights), size], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  rmSync(dir, { recursive: true, force: true });
  renameSync(building, dir);
  return images;
}
