import { readFileSync, statSync } from 'node:fs';

/**
 * A small file read on every request (tokens, share links) and changed by other processes (`diskvault token
 * create` while the server runs): parsed again only when its modification time, size or inode changed, so
 * a change takes effect on the next request without a reload, and an unchanged file costs one stat.
 */
export class FileWatchCache<T> {
  private cache: { key: string; value: T } | undefined;

  /** `parse` turns the file's text into the value; `absent` is the value while the file does not exist. */
  constructor(
    readonly path: string,
    private readonly parse: (text: string, path: string) => T,
    private readonly absent: () => T,
  ) {}

  current(): T {
    let key: string;
    try {
      const st = statSync(this.path);
      key = `${st.mtimeMs}:${st.size}:${st.ino}`;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return this.absent();
      throw err;
    }
    if (this.cache?.key !== key)
      this.cache = { key, value: this.parse(readFileSync(this.path, 'utf8'), this.path) };
    return this.cache.value;
  }

  /** Forgets the parsed value: this process just wrote the file (a rewrite within one mtime tick keeps the key). */
  invalidate(): void {
    this.cache = undefined;
  }
}
