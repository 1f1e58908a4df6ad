import type { ContainerFormat } from './chain.js';
import type { ImageFile } from './image-file.js';
import { QCOW2_MAGIC } from './qcow2.js';
import { VDI_SIGNATURE } from './vdi.js';
import { VHD_COOKIE } from './vhd.js';
import { DESCRIPTOR_SIGNATURE, VMDK_MAGIC } from './vmdk.js';

/** Formats recognised by their magic; the ones diskvault refuses are recognised too, to say so by name. */
export type DetectedFormat = ContainerFormat | 'vhdx' | 'vmdk-cowd';

/**
 * Tells the container format from magic bytes at the start (and, for fixed VHD, the footer at the end).
 * Anything unrecognised is raw: an ISO, a partitioned disk, a filesystem image.
 */
export async function detectFormat(file: ImageFile): Promise<DetectedFormat> {
  const head = Buffer.alloc(512);
  await file.readInto(head, 0, Math.min(512, file.size), 0);
  if (head.readUInt32BE(0) === QCOW2_MAGIC) return 'qcow2';
  if (head.toString('latin1', 0, 8) === 'vhdxfile') return 'vhdx';
  if (head.readUInt32LE(64) === VDI_SIGNATURE && head.toString('latin1', 0, 4) === '<<< ') return 'vdi';
  if (head.readUInt32LE(0) === VMDK_MAGIC) return 'vmdk';
  if (head.toString('latin1', 0, 4) === 'COWD') return 'vmdk-cowd';
  if (head.toString('latin1', 0, 8) === VHD_COOKIE) return 'vhd';
  // A descriptor is a small text file; its signature comes first, after at most a few blank lines.
  if (file.size <= 1024 * 1024 && head.toString('latin1').trimStart().startsWith(DESCRIPTOR_SIGNATURE))
    return 'vmdk';
  if (file.size >= 1024 && file.size % 512 === 0) {
    const tail = Buffer.alloc(512);
    await file.readInto(tail, 0, 512, file.size - 512);
    if (tail.toString('latin1', 0, 8) === VHD_COOKIE) return 'vhd';
  }
  return 'raw';
}
