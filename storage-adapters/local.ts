import { randomBytes } from 'node:crypto';
import type { Dirent } from 'node:fs';
import {
  type FileHandle,
  lstat,
  mkdir,
  open,
  readdir,
  realpath,
  rename,
  rm,
  stat,
  unlink,
} from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  ConflictError,
  InvalidInputError,
  isNoSpace,
  NotFoundError,
  StorageFullError,
} from '../common/errors.js';
import type { BufferAllocator, ByteRange, ListEntry, StorageAdapter } from './adapter.js';
import { validateKey } from './adapter.js';
import { checkRange, clampRange, validateListPrefix } from './adapter-support.js';

/**
 * Blobs as files under one root folder; a key's '/' segments are folders. The adapter does not fan out
 * on its own: callers choose keys like `chunks/ab/abcd…` so that no folder holds millions of entries.
 *
 * Crash safety: a put writes `<folder>/.tmp~<random>`, fsyncs it, renames it over the key and fsyncs the
 * folder (and any folder it had to create). A reader, a listing or a crash therefore sees the old object or
 * the whole new one. `~` is not a key character, so a temp file can never be mistaken for an object.
 * Temp files a crash leaves behind are skipped by `list` and removed by `openLocalStorage` once they are
 * older than `tempMaxAgeMs` (default 15 minutes: old enough that no live put, even one of another process
 * sharing the root, still owns them).
 *
 * A key cannot be both an object and a folder of other keys here ('a' and 'a/b'); such a put throws
 * ConflictError. Callers' key schemes never need both.
 */
export interface LocalStorageOptions {
  /** Temp files older than this are removed at open. */
  tempMaxAgeMs?: number;
}

const TEMP_PREFIX = '.tmp~';
/**
 * Objects are readable by the server's user only, and so are the folders: a chunk's name is the hash of its
 * content, so even a listing tells another local user which known files are stored. A mode can only lose
 * bits to the umask, so these hold whatever it is.
 */
const FILE_MODE = 0o600;
const FOLDER_MODE = 0o700;
const DEFAULT_TEMP_MAX_AGE_MS = 15 * 60 * 1000;
/** Files a listing stats at once; bounded so a huge fan-out folder cannot open thousands of handles. */
const STAT_CONCURRENCY = 32;
const DELETE_CONCURRENCY = 16;
const SEGMENT_PATTERN = /^[A-Za-z0-9._-]+$/;

export async function openLocalStorage(
  root: string,
  options: LocalStorageOptions = {},
): Promise<StorageAdapter> {
  await mkdir(root, { recursive: true, mode: FOLDER_MODE });
  const resolvedRoot = await realpath(root);
  const rootStat = await stat(resolvedRoot);
  if (!rootStat.isDirectory()) throw new InvalidInputError(`storage root ${root} is not a directory`);
  await removeStaleTempFiles(resolvedRoot, Date.now() - (options.tempMaxAgeMs ?? DEFAULT_TEMP_MAX_AGE_MS));
  return new LocalStorage(resolvedRoot);
}

class LocalStorage implements StorageAdapter {
  readonly description: string;

  constructor(private readonly root: string) {
    this.description = `local:${root}`;
  }

  private pathOf(key: string): string {
    validateKey(key);
    // validateKey already forbids '..' and absolute keys; this re-check guards against a future change there.
    const full = path.join(this.root, key);
    if (!full.startsWith(this.root + path.sep))
      throw new InvalidInputError(`storage key escapes the root: ${key}`);
    return full;
  }

  async put(key: string, data: Uint8Array | Readable): Promise<void> {
    const target = this.pathOf(key);
    const folder = path.dirname(target);
    const temp = path.join(folder, `${TEMP_PREFIX}${randomBytes(8).toString('hex')}`);
    let handle: FileHandle | undefined;
    let renamed = false;
    try {
      // The fan-out folder almost always exists already: create it only when the open says it is missing.
      handle = await open(temp, 'wx', FILE_MODE).catch(async (err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT' && err.code !== 'ENOTDIR') throw err;
        await this.createFolders(folder, key);
        return await open(temp, 'wx', FILE_MODE);
      });
      if (data instanceof Uint8Array) {
        await handle.writeFile(data);
      } else {
        const sink = handle;
        // A sink function rather than handle.createWriteStream(): that stream keeps a reference on the
        // handle until it is destroyed, and the handle must stay open for the fsync below.
        await pipeline(data, async (source: AsyncIterable<Buffer | string>) => {
          for await (const part of source)
            await writeFully(sink, typeof part === 'string' ? Buffer.from(part) : part);
        });
      }
      await handle.sync();
      await handle.close();
      handle = undefined;
      await rename(temp, target).catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'EISDIR' || err.code === 'ENOTEMPTY' || err.code === 'EEXIST') {
          throw new ConflictError(`storage key ${key} is a folder of other keys`);
        }
        throw err;
      });
      renamed = true;
      await fsyncFolder(folder);
    } catch (err) {
      if (handle) await handle.close().catch(() => {});
      if (!renamed) await unlink(temp).catch(() => {});
      if (isNoSpace(err))
        throw new StorageFullError(`no space left storing ${key} in ${this.root}`, { cause: err });
      throw err;
    }
  }

  /** mkdir -p, then fsync every folder whose entry list changed so the new folders survive a crash. */
  private async createFolders(folder: string, key: string): Promise<void> {
    let firstCreated: string | undefined;
    try {
      firstCreated = await mkdir(folder, { recursive: true, mode: FOLDER_MODE });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOTDIR' || code === 'EEXIST') {
        throw new ConflictError(`storage key ${key} lies under an existing object`);
      }
      throw err;
    }
    if (firstCreated === undefined) return;
    for (let dir = path.dirname(firstCreated); ; dir = path.join(dir, nextSegment(dir, folder))) {
      await fsyncFolder(dir);
      if (dir === path.dirname(folder)) break;
    }
  }

  async get(key: string, range?: ByteRange): Promise<Readable> {
    const file = this.pathOf(key);
    if (range) checkRange(range);
    const { handle, size } = await openForRead(file, key);
    try {
      const bounds = range && clampRange(range, size, key);
      return handle.createReadStream(bounds ? { start: bounds.start, end: bounds.end } : {});
    } catch (err) {
      await handle.close().catch(() => {});
      throw err;
    }
  }

  /**
   * One positional read into a buffer of exactly the object's size (or the range's): a chunk is read on every
   * restore, and a 64 KiB stream joined into one buffer cost the server a copy and dozens of reads per chunk.
   */
  async getBytes(key: string, range?: ByteRange, alloc?: BufferAllocator): Promise<Buffer> {
    if (range) checkRange(range);
    const { handle, size } = await openForRead(this.pathOf(key), key);
    try {
      const bounds = range ? clampRange(range, size, key) : { start: 0, end: size - 1 };
      const length = Math.max(0, bounds.end - bounds.start + 1);
      const out = alloc ? alloc(length) : Buffer.allocUnsafe(length);
      let filled = 0;
      while (filled < out.length) {
        const { bytesRead } = await handle.read(out, filled, out.length - filled, bounds.start + filled);
        // The object is immutable once renamed into place: a short file means it was replaced under us.
        if (bytesRead === 0) return out.subarray(0, filled);
        filled += bytesRead;
      }
      return out;
    } finally {
      await handle.close().catch(() => {});
    }
  }

  async stat(key: string): Promise<{ size: number; mtimeMs: number } | undefined> {
    const file = this.pathOf(key);
    try {
      const info = await stat(file);
      return info.isFile() ? { size: info.size, mtimeMs: info.mtimeMs } : undefined;
    } catch (err) {
      if (isAbsent(err)) return undefined;
      throw err;
    }
  }

  async delete(key: string): Promise<void> {
    const file = this.pathOf(key);
    try {
      await unlink(file);
    } catch (err) {
      // EISDIR: the key names a folder of other keys, so no object by that name exists.
      if (isAbsent(err) || (err as NodeJS.ErrnoException).code === 'EISDIR') return;
      throw err;
    }
  }

  async deleteMany(keys: string[]): Promise<void> {
    for (const key of keys) validateKey(key);
    let next = 0;
    const worker = async () => {
      while (next < keys.length) await this.delete(keys[next++]);
    };
    await Promise.all(Array.from({ length: Math.min(DELETE_CONCURRENCY, keys.length) }, worker));
  }

  async *list(prefix: string): AsyncIterable<ListEntry> {
    validateListPrefix(prefix);
    const slash = prefix.lastIndexOf('/');
    const startFolder = slash < 0 ? '' : prefix.slice(0, slash);
    const namePrefix = prefix.slice(slash + 1);
    yield* this.walk(startFolder, namePrefix);
  }

  /**
   * Depth-first in S3 order (byte order of whole keys): a folder sorts as its name plus '/', so 'a-x'
   * comes before the keys under 'a/'. Only one folder's names are held per level.
   */
  private async *walk(folder: string, namePrefix: string): AsyncGenerator<ListEntry> {
    let entries: Dirent[];
    try {
      entries = await readdir(folder === '' ? this.root : path.join(this.root, folder), {
        withFileTypes: true,
      });
    } catch (err) {
      // A folder removed while we walk, or a prefix through a file, simply holds no keys.
      if (isAbsent(err)) return;
      throw err;
    }
    const candidates = entries
      .filter((e) => isKeySegment(e.name) && e.name.startsWith(namePrefix) && (e.isFile() || e.isDirectory()))
      .map((e) => ({
        name: e.name,
        isFolder: e.isDirectory(),
        sortName: e.isDirectory() ? `${e.name}/` : e.name,
      }))
      .sort((a, b) => (a.sortName < b.sortName ? -1 : a.sortName > b.sortName ? 1 : 0));

    for (let i = 0; i < candidates.length; ) {
      if (candidates[i].isFolder) {
        yield* this.walk(joinKey(folder, candidates[i].name), '');
        i++;
        continue;
      }
      // Stat a run of consecutive files together; the order of yields stays the sorted order.
      const run: string[] = [];
      while (i < candidates.length && !candidates[i].isFolder && run.length < STAT_CONCURRENCY) {
        run.push(joinKey(folder, candidates[i++].name));
      }
      const stats = await Promise.all(
        run.map((key) =>
          lstat(path.join(this.root, key)).catch((err) => {
            if (isAbsent(err)) return undefined; // deleted since readdir
            throw err;
          }),
        ),
      );
      for (let j = 0; j < run.length; j++) {
        const info = stats[j];
        if (info?.isFile()) yield { key: run[j], size: info.size, mtimeMs: info.mtimeMs };
      }
    }
  }

  async close(): Promise<void> {}
}

/** An object opened for reading, and its size from the one fstat that also tells a file from a folder. */
async function openForRead(file: string, key: string): Promise<{ handle: FileHandle; size: number }> {
  try {
    const handle = await open(file, 'r');
    const info = await handle.stat();
    if (!info.isFile()) {
      await handle.close();
      throw new NotFoundError(`storage key ${key} not found`, { key });
    }
    return { handle, size: info.size };
  } catch (err) {
    if (isAbsent(err) || (err as NodeJS.ErrnoException).code === 'EISDIR') {
      throw new NotFoundError(`storage key ${key} not found`, { key });
    }
    throw err;
  }
}

/** ENOENT, or ENOTDIR when a path component is a file: either way no such key. Anything else is real. */
function isAbsent(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}

function isKeySegment(name: string): boolean {
  return SEGMENT_PATTERN.test(name) && name !== '.' && name !== '..';
}

function joinKey(folder: string, name: string): string {
  return folder === '' ? name : `${folder}/${name}`;
}

/** The next path segment of `descendant` below `dir`. */
function nextSegment(dir: string, descendant: string): string {
  return path.relative(dir, descendant).split(path.sep)[0];
}

async function writeFully(handle: FileHandle, bytes: Uint8Array): Promise<void> {
  for (let offset = 0; offset < bytes.length; ) {
    const { bytesWritten } = await handle.write(bytes, offset, bytes.length - offset);
    offset += bytesWritten;
  }
}

async function fsyncFolder(folder: string): Promise<void> {
  const handle = await open(folder, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Remove temp files left by crashed puts; a full walk, so it costs one readdir per folder at open. */
async function removeStaleTempFiles(root: string, olderThanMs: number): Promise<void> {
  const folders = [root];
  while (folders.length > 0) {
    const folder = folders.pop()!;
    let entries: Dirent[];
    try {
      entries = await readdir(folder, { withFileTypes: true });
    } catch (err) {
      if (isAbsent(err)) continue;
      throw err;
    }
    for (const entry of entries) {
      const full = path.join(folder, entry.name);
      if (entry.isDirectory()) {
        folders.push(full);
      } else if (entry.name.startsWith(TEMP_PREFIX)) {
        const info = await lstat(full).catch(() => undefined);
        if (info && info.mtimeMs < olderThanMs) await rm(full, { force: true });
      }
    }
  }
}
