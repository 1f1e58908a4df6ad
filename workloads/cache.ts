import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rename, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildExt4Nights, type Ext4NightsOptions } from './ext4-nights.js';

const here = dirname(fileURLToPath(import.meta.url));

/**
 * A digest of the generator's own code: images made by another version of it are another workload, so a
 * change to the generator builds a fresh set instead of reusing a stale one.
 */
export function generatorFingerprint(): string {
  const h = createHash('sha256');
  for (const f of readdirSync(here)
    .filter((n) => n.endsWith('.js'))
    .sort()) {
    h.update(f).update(readFileSync(join(here, f)));
  }
  return h.digest('hex').slice(0, 12);
}

/** The folder name a workload is cached under: its parameters and the generator's fingerprint. */
export function workloadName(opts: Ext4NightsOptions): string {
  return `ext4-${opts.size / 2 ** 20}M-n${opts.nights}-s${opts.seed}-${generatorFingerprint()}`;
}

/**
 * night0..night<nights> of the workload under root/<workloadName>/, built once and reused. Concurrent callers
 * (test files run in parallel) each build in their own temporary folder and rename it into place; a loser of
 * that race throws its copy away and uses the winner's. With `pruneStale`, sets an older generator made with
 * the same parameters are deleted once the new one is in place (the benchmark's are gigabytes).
 */
export async function cachedExt4Nights(
  root: string,
  opts: Ext4NightsOptions,
  { pruneStale = false, onBuild }: { pruneStale?: boolean; onBuild?: (dir: string) => void } = {},
): Promise<string[]> {
  const name = workloadName(opts);
  const dir = join(root, name);
  const images = Array.from({ length: opts.nights + 1 }, (_, n) => join(dir, `night${n}.img`));
  if (await exists(images[images.length - 1])) return images;
  await mkdir(root, { recursive: true });
  onBuild?.(dir);
  const building = await mkdtemp(join(root, `.build-${name}-`));
  try {
    await buildExt4Nights(building, opts);
    await rename(building, dir).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOTEMPTY' && err.code !== 'EEXIST') throw err;
    });
  } finally {
    await rm(building, { recursive: true, force: true });
  }
  if (pruneStale) {
    const prefix = name.slice(0, name.lastIndexOf('-') + 1);
    for (const other of await readdir(root)) {
      if (other.startsWith(prefix) && other !== name)
        await rm(join(root, other), { recursive: true, force: true });
    }
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
