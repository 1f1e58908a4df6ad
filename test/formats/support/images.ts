import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { cp, mkdir, mkdtemp, open, rename, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { ExecutionContext } from 'ava';
import type { ImageSource } from '../../../agent/source.js';

const run = promisify(execFile);

/** Runs a command and returns stdout; a failure carries its stderr in the message. */
export async function sh(cmd: string, args: string[]): Promise<string> {
  try {
    const { stdout } = await run(cmd, args, { maxBuffer: 64 * 1024 * 1024 });
    return stdout;
  } catch (err) {
    const e = err as Error & { stderr?: string };
    throw new Error(`${cmd} ${args.join(' ')} failed: ${e.stderr || e.message}`);
  }
}

export const BASE_SIZE = 64 * 1024 * 1024;

/**
 * A 64 MiB ext4 image holding real files (documentation text, compressed files, 5 MiB of random data) and
 * free space, built once and shared by every test file: built in a private folder, then renamed into place,
 * since several test workers may race to build it.
 */
export async function baseImage(): Promise<string> {
  const path = join(tmpdir(), 'diskvault-formats-base-v3.raw');
  const lock = `${path}.lock`;
  for (;;) {
    if (existsSync(path)) return path;
    try {
      await mkdir(lock);
      break;
    } catch {
      // Another worker is building it; a lock older than 5 minutes belongs to a crashed run.
      try {
        if (Date.now() - statSync(lock).mtimeMs > 300_000) rmSync(lock, { recursive: true, force: true });
      } catch {
        // gone meanwhile
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  try {
    if (!existsSync(path)) await buildBase(path);
  } finally {
    rmSync(lock, { recursive: true, force: true });
  }
  return path;
}

async function buildBase(path: string): Promise<void> {
  const work = await mkdtemp(join(tmpdir(), 'dv-formats-build-'));
  try {
    const src = join(work, 'src');
    await mkdir(src);
    // Real files where the machine has them (CI containers may strip /usr/share/doc, and some entries are
    // dangling symlinks: a partial copy still makes a valid disk), plus text and random data always.
    await cp('/usr/share/doc', join(src, 'doc'), {
      recursive: true,
      filter: (p) => p === '/usr/share/doc' || /\/doc\/(?:[a-k]|lib[a-f])/.test(p),
    }).catch(() => {});
    await writeFile(join(src, 'random.bin'), randomBytes(5 * 1024 * 1024));
    const lines = Array.from(
      { length: 200_000 },
      (_, i) => `line ${i}: the quick brown fox ${(i * 7919) % 10007}\n`,
    );
    await writeFile(join(src, 'text.log'), lines.join(''));
    const img = join(work, 'base.raw');
    await writeFile(img, '');
    await truncate(img, BASE_SIZE);
    await sh('mke2fs', ['-q', '-F', '-t', 'ext4', '-E', 'nodiscard', '-d', src, img]);
    await rename(img, path);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** A fresh temp folder removed when the test ends. */
export function tempDir(t: ExecutionContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'dv-formats-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export async function qemuImg(...args: string[]): Promise<string> {
  return sh('qemu-img', args);
}

/** What qemu itself reads from an image: the reference every reader is checked against. */
export async function qemuRaw(image: string, qemuFormat: string, dir: string): Promise<string> {
  const out = join(dir, `${Math.random().toString(36).slice(2)}.ref.raw`);
  await qemuImg('convert', '-f', qemuFormat, '-O', 'raw', image, out);
  return out;
}

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.allocUnsafe(8 * 1024 * 1024);
    for (let pos = 0; ; ) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) break;
      h.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
  } finally {
    await fh.close();
  }
  return h.digest('hex');
}

/** Reads a source sequentially in `window`-byte reads, as the backup pipeline does, and hashes it. */
export async function sha256Source(
  src: ImageSource,
  window = 32 * 1024 * 1024,
): Promise<{ sha256: string; bytes: number }> {
  const h = createHash('sha256');
  const buf = Buffer.allocUnsafe(window);
  let pos = 0;
  for (;;) {
    const n = await src.read(buf, pos);
    if (n === 0) break;
    h.update(buf.subarray(0, n));
    pos += n;
  }
  return { sha256: h.digest('hex'), bytes: pos };
}

export async function readWhole(src: ImageSource): Promise<Buffer> {
  const out = Buffer.alloc(src.size ?? 0);
  for (let pos = 0; pos < out.length; ) {
    const n = await src.read(out.subarray(pos, Math.min(out.length, pos + 16 * 1024 * 1024)), pos);
    if (n === 0) break;
    pos += n;
  }
  return out;
}

export function fileSize(path: string): number {
  return statSync(path).size;
}

/** Patches bytes of a file in place (crafting damaged or forged headers and tables). */
export async function patch(path: string, offset: number, bytes: Buffer): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await fh.write(bytes, 0, bytes.length, offset);
  } finally {
    await fh.close();
  }
}
