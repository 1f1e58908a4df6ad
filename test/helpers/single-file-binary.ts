import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { open, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const root = fileURLToPath(new URL('../../../', import.meta.url));
export const BINARY = join(root, 'dist', 'diskvault-linux-x64');
const STAMP = `${BINARY}.inputs`;

/** Every file the binary is built from: the compiled code (tests aside), the build script, the addons. */
async function inputsHash(): Promise<string> {
  const h = createHash('sha256').update(process.version);
  const walk = async (dir: string): Promise<void> => {
    for (const e of (await readdir(dir, { withFileTypes: true })).sort((a, b) =>
      a.name.localeCompare(b.name),
    )) {
      const p = join(dir, e.name);
      if (e.isDirectory()) {
        if (!['test', 'sea', 'bench'].includes(e.name)) await walk(p);
      } else if (e.name.endsWith('.js')) h.update(p).update(await readFile(p));
    }
  };
  await walk(join(root, 'dist'));
  for (const f of ['tools/build-binary.mjs', 'package-lock.json']) h.update(await readFile(join(root, f)));
  return h.digest('hex');
}

/**
 * dist/diskvault-linux-x64, built by `npm run build:binary`'s script unless the one there was built from
 * exactly the current inputs (a stamp beside it records their hash): a test run builds it once, and a
 * rerun without code changes not at all. Returns how long the build took (0 when reused).
 */
export function ensureBinary(): Promise<{ path: string; buildSeconds: number }> {
  // Tests of one file share one build (two at once would write the same files).
  building ??= buildUnlessCurrent();
  return building;
}
let building: Promise<{ path: string; buildSeconds: number }> | undefined;

async function buildUnlessCurrent(): Promise<{ path: string; buildSeconds: number }> {
  // Test files run in separate processes: one builds while the others wait for it and then reuse its build.
  const lock = `${BINARY}.lock`;
  const deadline = Date.now() + 10 * 60_000;
  for (;;) {
    try {
      await (await open(lock, 'wx')).close();
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const st = await stat(lock).catch(() => undefined);
      // A lock older than any build is a killed run's.
      if (st && Date.now() - st.mtimeMs > 10 * 60_000) await rm(lock, { force: true });
      else if (Date.now() > deadline) throw new Error(`${lock} is held by another test run`);
      else await new Promise((r) => setTimeout(r, 200));
    }
  }
  try {
    return await buildLocked();
  } finally {
    await rm(lock, { force: true });
  }
}

async function buildLocked(): Promise<{ path: string; buildSeconds: number }> {
  const want = await inputsHash();
  const have = await readFile(STAMP, 'utf8').catch(() => '');
  if (have.trim() === want && (await stat(BINARY).catch(() => undefined)))
    return { path: BINARY, buildSeconds: 0 };
  const started = Date.now();
  await promisify(execFile)(process.execPath, [join(root, 'tools', 'build-binary.mjs')], {
    cwd: root,
    maxBuffer: 16 * 1024 * 1024,
  });
  await writeFile(STAMP, `${want}\n`);
  return { path: BINARY, buildSeconds: (Date.now() - started) / 1000 };
}
