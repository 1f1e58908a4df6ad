import { once } from 'node:events';
import { createWriteStream, constants as fsc } from 'node:fs';
import { type FileHandle, open, stat } from 'node:fs/promises';
import type { Writable } from 'node:stream';
import { InvalidInputError, isNoSpace, StorageFullError } from '../../common/errors.js';
import { deviceGeometry } from '../sources/block-device.js';

/**
 * Where a restore writes: a regular file (created or overwritten, sparse by default), a block device (never
 * truncated, no holes), or a stream (stdout, a pipe, a character device like /dev/null) written strictly in
 * order. The restore core sees only this interface.
 */
export interface RestoreTarget {
  readonly kind: 'file' | 'device' | 'stream';
  readonly path: string;
  /** True when bytes never written read back as zeros (a sparse file made empty first): zero chunks are skipped. */
  readonly holesAreZero: boolean;
  /** Positional for files and devices; a stream accepts only the offset that follows the previous write. */
  write(buf: Buffer, offset: number): Promise<void>;
  /** Flushes what the kind needs flushed; called once after the last write succeeded. */
  finish(): Promise<void>;
  close(): Promise<void>;
}

export interface TargetOptions {
  /** The image size: a file ends exactly here, a device must be at least this big. */
  size: number;
  /** Leave zero chunks as holes in a file (ignored for devices and streams). */
  sparse: boolean;
  /** Keep the existing content: the restore reads it and rewrites only differing chunks. */
  inPlace: boolean;
  /** fdatasync a file before reporting success (devices are always synced). */
  fsync?: boolean;
}

export async function openRestoreTarget(path: string, opts: TargetOptions): Promise<RestoreTarget> {
  if (path === '-') {
    if (opts.inPlace) throw new InvalidInputError('--in-place needs a file or a device, not stdout');
    return new StreamTarget('-', process.stdout, false);
  }
  const st = await stat(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  });
  if (st?.isBlockDevice()) return await DeviceTarget.open(path, st.rdev, opts);
  if (st && (st.isCharacterDevice() || st.isFIFO())) {
    if (opts.inPlace)
      throw new InvalidInputError(`--in-place needs a file or a block device; ${path} is a stream`);
    return new StreamTarget(path, createWriteStream(path, { flags: 'a' }), true);
  }
  if (st && !st.isFile())
    throw new InvalidInputError(`${path} is neither a file, a block device nor a stream`);
  return await FileTarget.open(path, opts);
}

/** A target over any writable stream (stdout, a pipe): bytes go out strictly in order, with backpressure. */
export function streamTarget(out: Writable, name = '-'): RestoreTarget {
  return new StreamTarget(name, out, false);
}

function writeError(err: unknown, path: string): unknown {
  if (isNoSpace(err))
    return new StorageFullError(`no space left on the device holding ${path}`, { cause: err });
  return err;
}

class FileTarget implements RestoreTarget {
  readonly kind = 'file';
  private constructor(
    readonly path: string,
    private readonly fh: FileHandle,
    readonly holesAreZero: boolean,
    private readonly size: number,
    private readonly fsync: boolean,
  ) {}

  static async open(path: string, opts: TargetOptions): Promise<FileTarget> {
    if (opts.inPlace) {
      const fh = await open(path, fsc.O_RDWR | fsc.O_CREAT, 0o644);
      // A longer old image would otherwise keep its tail; a shorter one reads as zeros past its end.
      await fh.truncate(opts.size).catch(async (err) => {
        await fh.close();
        throw writeError(err, path);
      });
      return new FileTarget(path, fh, false, opts.size, opts.fsync ?? false);
    }
    // Truncating to 0 first drops every old block, so nothing of a previous image can show through a hole.
    const fh = await open(path, 'w', 0o644);
    if (opts.sparse) {
      await fh.truncate(opts.size).catch(async (err) => {
        await fh.close();
        throw writeError(err, path);
      });
    }
    return new FileTarget(path, fh, opts.sparse, opts.size, opts.fsync ?? false);
  }

  async write(buf: Buffer, offset: number): Promise<void> {
    let done = 0;
    try {
      while (done < buf.length) {
        const { bytesWritten } = await this.fh.write(buf, done, buf.length - done, offset + done);
        done += bytesWritten;
      }
    } catch (err) {
      throw writeError(err, this.path);
    }
  }

  async finish(): Promise<void> {
    // Without --sparse the file grew by writes; the truncate is a no-op unless the image ends in a hole.
    await this.fh.truncate(this.size).catch((err) => {
      throw writeError(err, this.path);
    });
    if (this.fsync) await this.fh.datasync();
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}

class DeviceTarget implements RestoreTarget {
  readonly kind = 'device';
  readonly holesAreZero = false;
  private constructor(
    readonly path: string,
    private readonly fh: FileHandle,
  ) {}

  static async open(path: string, rdev: number, opts: TargetOptions): Promise<DeviceTarget> {
    const capacity = await blockDeviceSize(path, rdev);
    if (capacity !== undefined && capacity < opts.size) {
      throw new InvalidInputError(`${path} holds ${capacity} bytes, the snapshot needs ${opts.size}`);
    }
    // O_EXCL on a block device claims it: the kernel refuses (EBUSY) while it is mounted, swap, part of a
    // RAID or LVM volume, or claimed by another program, and a restore written under a live filesystem
    // would destroy it while the kernel still trusts its cache.
    const fh = await open(path, fsc.O_RDWR | fsc.O_EXCL).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EBUSY') throw err;
      throw new InvalidInputError(
        `${path} is in use (mounted, swap, part of a RAID or LVM volume, or claimed by another program): unmount or release it first`,
      );
    });
    return new DeviceTarget(path, fh);
  }

  async write(buf: Buffer, offset: number): Promise<void> {
    let done = 0;
    try {
      while (done < buf.length) {
        const { bytesWritten } = await this.fh.write(buf, done, buf.length - done, offset + done);
        if (bytesWritten === 0) throw new StorageFullError(`${this.path} ended at byte ${offset + done}`);
        done += bytesWritten;
      }
    } catch (err) {
      throw writeError(err, this.path);
    }
  }

  async finish(): Promise<void> {
    // A device is usually booted or mounted right after a restore: its cache must reach the medium.
    await this.fh.sync();
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}

/**
 * The device's size from sysfs; undefined without /sys (a container), where a too-small device then fails
 * on its first short write instead.
 */
async function blockDeviceSize(path: string, rdev: number): Promise<number | undefined> {
  try {
    return (await deviceGeometry(rdev, path)).size;
  } catch {
    return undefined;
  }
}

class StreamTarget implements RestoreTarget {
  readonly kind = 'stream';
  readonly holesAreZero = false;
  private next = 0;
  private failure: Error | undefined;
  constructor(
    readonly path: string,
    private readonly out: Writable,
    private readonly owned: boolean,
  ) {
    out.on('error', (err) => {
      this.failure = err;
    });
  }

  async write(buf: Buffer, offset: number): Promise<void> {
    if (offset !== this.next) throw new Error(`internal: stream write at ${offset}, expected ${this.next}`);
    if (this.failure) throw writeError(this.failure, this.path);
    this.next += buf.length;
    // Backpressure: a slow reader (a pipe into ssh, dd) holds the restore instead of filling memory.
    if (!this.out.write(buf)) {
      // events.once rejects when the stream errors before draining (EPIPE: the reader went away).
      await once(this.out, 'drain').catch((err: unknown) => {
        throw writeError(err, this.path);
      });
    }
  }

  async finish(): Promise<void> {
    if (this.failure) throw writeError(this.failure, this.path);
    if (this.owned) {
      await new Promise<void>((resolve, reject) =>
        this.out.end((err?: Error | null) => (err ? reject(err) : resolve())),
      );
    } else {
      // Until every write queued is handed over or has failed: a stream may take the last writes into its
      // queue and fail them later (EPIPE once the reader of a pipe has gone), and a restore that ended before
      // would report a whole image its reader never got. A write of nothing completes after those before it.
      await new Promise<void>((resolve, reject) =>
        this.out.write(Buffer.alloc(0), (err?: Error | null) => (err ? reject(err) : resolve())),
      ).catch((err: unknown) => {
        throw writeError(this.failure ?? err, this.path);
      });
      if (this.failure) throw writeError(this.failure, this.path);
    }
  }

  async close(): Promise<void> {
    if (this.owned && !this.out.destroyed) this.out.destroy();
  }
}
