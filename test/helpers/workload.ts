import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rename, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
/** The shared folder sits beside the project root (dist/test/helpers/ is three levels below it). */
export const WORKLOAD_SCRIPT =
  [
    fileURLToPath(new URL('../../../../shared/workloads/make-ext4-nights.sh', import.meta.url)),
    '/work/shared/workloads/make-ext4-nights.sh',
  ].find((p) => existsSync(p)) ??
  fileURLToPath(new URL('../../../../shared/workloads/make-ext4-nights.sh', import.meta.url));

/**
 * night0..night3 of the 256M ext4 workload (make-ext4-nights.sh DIR 3 256M), built once and cached under
 * os.tmpdir()/diskvault-test-workload-256M/<script mtime>/, the same place test/restore uses, so a test run
 * builds it once. Concurrent test files each build in their own temp folder and rename it into place; a
 * loser of that race throws its copy away and uses the winner's.
 */
export async function workload256M(): Promise<string[]> {
  const key = Math.floor((await stat(WORKLOAD_SCRIPT)).mtimeMs);
  const root = join(tmpdir(), 'diskvault-test-workload-256M');
  const dir = join(root, String(key));
  const images = [0, 1, 2, 3].map((n) => join(dir, `night${n}.img`));
  if (await exists(images[3])) return images;
  await mkdir(root, { recursive: true });
  const building = await mkdtemp(join(root, `.build-${key}-`));
  try {
    await run(WORKLOAD_SCRIPT, [building, '3', '256M'], { maxBuffer: 16 * 1024 * 1024 });
    await rename(building, dir).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOTEMPTY' && err.code !== 'EEXIST') throw err;
    });
  } finally {
    await rm(building, { recursive: true, force: true });
  }
  return images;
}

async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}
