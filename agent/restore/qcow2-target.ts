import { InvalidInputError } from '../../common/errors.js';
import { Qcow2Writer } from '../formats/qcow2-writer.js';
import type { RestoreTarget } from './restore-target.js';

/**
 * `restore --format qcow2`: the restored disk as a sparse qcow2 v3 file, for a VM to boot from directly.
 * Zero chunks are never written, so they stay unallocated clusters; the writer builds the file under a
 * temporary name and renames it into place only in finish(), so a failed restore leaves no half image.
 */
class Qcow2Target implements RestoreTarget {
  readonly kind = 'file' as const;
  readonly holesAreZero = true;
  private finished = false;

  constructor(
    readonly path: string,
    private readonly writer: Qcow2Writer,
  ) {}

  write(buf: Buffer, offset: number): Promise<void> {
    return this.writer.writeAt(offset, buf);
  }

  async finish(): Promise<void> {
    await this.writer.finish();
    this.finished = true;
  }

  async close(): Promise<void> {
    if (!this.finished) await this.writer.abort();
  }
}

export async function openQcow2Target(
  path: string,
  opts: { size: number; inPlace: boolean },
): Promise<RestoreTarget> {
  if (path === '-') throw new InvalidInputError('--format qcow2 writes a file, not stdout');
  if (opts.inPlace)
    throw new InvalidInputError('--in-place rewrites a raw disk; it cannot be combined with --format qcow2');
  return new Qcow2Target(path, await Qcow2Writer.create(path, opts.size));
}
