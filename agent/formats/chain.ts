import { realpath } from 'node:fs/promises';
import { dirname, isAbsolute, resolve } from 'node:path';
import { InvalidInputError, NotFoundError } from '../../common/errors.js';
import type { ImageSource } from '../source.js';
import { MAX_CHAIN_DEPTH } from './limits.js';

export type ContainerFormat = 'raw' | 'qcow2' | 'vhd' | 'vmdk' | 'vdi';

/** The files already open along one backing chain, so a chain that points back at itself is caught. */
export interface ChainContext {
  /** Real paths from the top image down to the one being opened. */
  readonly seen: readonly string[];
}

/** Opens a backing (parent) image as a disk, whatever its format; raw parents are read directly. */
export type OpenBacking = (
  path: string,
  format: ContainerFormat | undefined,
  chain: ChainContext,
) => Promise<ImageSource>;

/** Adds an image to the chain, refusing loops and chains deeper than any real deployment builds. */
export async function enterChain(chain: ChainContext, path: string): Promise<ChainContext> {
  let real: string;
  try {
    real = await realpath(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      const from = chain.seen.at(-1);
      throw new NotFoundError(
        from ? `backing file ${path} of ${from} does not exist` : `${path} does not exist`,
        { path },
      );
    }
    throw err;
  }
  if (chain.seen.includes(real)) {
    throw new InvalidInputError(`backing chain loops: ${[...chain.seen, real].join(' -> ')}`, {
      chain: [...chain.seen, real],
    });
  }
  if (chain.seen.length >= MAX_CHAIN_DEPTH) {
    throw new InvalidInputError(
      `backing chain of ${chain.seen[0]} is deeper than ${MAX_CHAIN_DEPTH} images`,
      { depth: chain.seen.length + 1 },
    );
  }
  return { seen: [...chain.seen, real] };
}

/**
 * A format diskvault detected (the user gave no --format) is the guest's word, not the user's: a guest that
 * writes a container header into its own raw disk must not make the backup open a host file or cut the disk
 * short (qemu's CVE-2008-2004). Readers refuse such an image when `detected` is true, with this error.
 */
export function refuseDetected(name: string, format: ContainerFormat, why: string): InvalidInputError {
  return new InvalidInputError(
    `${name}: ${why}; its format was detected, not given, so diskvault does not follow it: pass --format ${format} if it really is a ${format} image (--format raw backs up the file as it is)`,
  );
}

/** Relative backing names are relative to the folder of the image that names them (qemu's rule). */
export function resolveBackingPath(imagePath: string, name: string): string {
  return isAbsolute(name) ? name : resolve(dirname(imagePath), name);
}
