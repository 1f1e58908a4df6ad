import { stat } from 'node:fs/promises';
import { InvalidInputError } from '../../common/errors.js';
import type { ImageSource } from '../source.js';
import { RawFileSource } from './raw-file.js';
import { StreamSource } from './stdin.js';
import { StdinFileSource } from './stdin-file.js';

export interface OpenSourceOptions {
  /** 'raw' forces raw reading; a container name forces that reader; absent: detect. */
  format?: string;
  /** What '-' reads; process.stdin unless a test substitutes a stream. */
  stdin?: NodeJS.ReadableStream;
}

type OpenContainer = (path: string, format?: string) => Promise<ImageSource | null>;

/**
 * SOURCE as the user named it: '-' is stdin, anything else a file or block device. Container formats
 * (qcow2, vhd, vmdk, vdi) are read by agent/formats/ when that module is present; it answers null for a
 * raw image, which is then read here.
 */
export async function openSource(path: string, opts: OpenSourceOptions = {}): Promise<ImageSource> {
  if (path === '-') {
    if (opts.format && opts.format !== 'raw')
      throw new InvalidInputError('a piped image (-) can only be raw');
    // A file or device redirected to stdin is read into the windows directly, not through a stream.
    const direct = opts.stdin ? null : await StdinFileSource.open(0);
    return direct ?? new StreamSource((opts.stdin ?? process.stdin) as import('node:stream').Readable);
  }
  const st = await stat(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT' || err.code === 'ENOTDIR')
      throw new InvalidInputError(`${path} does not exist`);
    throw err;
  });
  if (st.isBlockDevice()) {
    // Devices are read raw: container readers work on files (an image inside a volume: back up the file).
    if (opts.format && opts.format !== 'raw')
      throw new InvalidInputError(
        `--format ${opts.format}: container images are read from files, ${path} is a block device`,
      );
    return await RawFileSource.open(path);
  }
  if (!st.isFile()) throw new InvalidInputError(`${path} is neither a regular file nor a block device`);
  if (opts.format !== 'raw') {
    // ---- hook for the formats engineer: agent/formats/index.ts exports openContainer(path, format?) ----
    const openContainer = await loadContainerReader();
    if (openContainer) {
      const container = await openContainer(path, opts.format);
      if (container) return container;
    } else if (opts.format) {
      throw new InvalidInputError(
        `--format ${opts.format} is not supported by this build (no container readers)`,
      );
    }
  }
  return await RawFileSource.open(path);
}

async function loadContainerReader(): Promise<OpenContainer | null> {
  const specifier = '../formats/index.js';
  try {
    const mod = (await import(specifier)) as { openContainer?: OpenContainer };
    return typeof mod.openContainer === 'function' ? mod.openContainer : null;
  } catch (err) {
    // Only "the formats module is not built" means raw-only; a broken formats module is a real error.
    const e = err as NodeJS.ErrnoException & { url?: string };
    if (e.code === 'ERR_MODULE_NOT_FOUND' && String(e.message).includes('formats')) return null;
    throw err;
  }
}
