import { InvalidInputError } from '../../common/errors.js';
import type { ImageSource } from '../source.js';
import { type ChainContext, type ContainerFormat, enterChain } from './chain.js';
import { type DetectedFormat, detectFormat } from './detect.js';
import { ImageFile } from './image-file.js';
import { openQcow2 } from './qcow2.js';
import { RawRangeSource } from './raw.js';
import { openVdi } from './vdi.js';
import { openVhd } from './vhd.js';
import { openVmdk } from './vmdk.js';

export type { ContainerFormat } from './chain.js';
export { detectFormat } from './detect.js';
export { Qcow2Writer, writeQcow2FromRaw } from './qcow2-writer.js';

const FORMATS: readonly string[] = ['raw', 'qcow2', 'vhd', 'vmdk', 'vdi'];

export function isContainerFormat(name: string): name is ContainerFormat {
  return FORMATS.includes(name);
}

/**
 * Opens a disk image file (a regular file: block devices are read raw by the caller) as the guest's disk. Returns null for raw images (the caller reads the file
 * itself, as fast as a file can be read); otherwise a reader of the virtual disk, backing chain included.
 * `format` overrides detection; a container that does not match the format it is given is refused. A detected
 * container (no `format`) is the guest's word: one that would open another file (a backing file, a parent, an
 * extent) or a fixed VHD whose footer disagrees with the file's size is refused (see refuseDetected).
 */
export async function openContainer(path: string, format?: ContainerFormat): Promise<ImageSource | null> {
  if (format !== undefined && !isContainerFormat(format)) {
    throw new InvalidInputError(`unknown image format '${format}' (known: ${FORMATS.join(', ')})`);
  }
  if (format === 'raw') return null;
  const chain = await enterChain({ seen: [] }, path);
  const file = await ImageFile.open(path);
  try {
    const detected = await detectFormat(file);
    if (detected === 'raw' && !format) {
      await file.close();
      return null;
    }
    return await openDetected(file, detected, format, chain, format === undefined);
  } catch (err) {
    await file.close();
    throw err;
  }
}

async function openDetected(
  file: ImageFile,
  detected: DetectedFormat,
  wanted: ContainerFormat | undefined,
  chain: ChainContext,
  probed: boolean,
): Promise<ImageSource> {
  if (detected === 'vhdx')
    throw new InvalidInputError(
      `${file.name} is a VHDX image, which diskvault does not support: convert it with qemu-img convert -O qcow2 (or -O raw)`,
    );
  if (detected === 'vmdk-cowd')
    throw new InvalidInputError(`${file.name} is an ESX COWD sparse VMDK, which diskvault does not support`);
  if (wanted && wanted !== detected)
    throw new InvalidInputError(`${file.name} is not a ${wanted} image (its header says ${detected})`);
  switch (detected) {
    case 'qcow2':
      return openQcow2(file, chain, openBacking, probed);
    case 'vhd':
      return openVhd(file, chain, openBacking, probed);
    case 'vmdk':
      return openVmdk(file, probed);
    case 'vdi':
      return openVdi(file);
    default:
      return new RawRangeSource(file, 'raw', 0, file.size);
  }
}

/**
 * Backing files are opened like the top image, except that a raw one is read here rather than by the caller.
 * Only a top image whose format the user gave has a backing file, so its chain is followed as it says.
 */
async function openBacking(
  path: string,
  format: ContainerFormat | undefined,
  parentChain: ChainContext,
): Promise<ImageSource> {
  const chain = await enterChain(parentChain, path);
  const file = await ImageFile.open(path);
  try {
    const detected = format === 'raw' ? 'raw' : await detectFormat(file);
    return await openDetected(file, detected, format, chain, false);
  } catch (err) {
    await file.close();
    throw err;
  }
}
