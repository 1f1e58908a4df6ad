import { readFile } from 'node:fs/promises';
import { InvalidInputError } from '../../common/errors.js';

/**
 * Size and logical sector size of a block device. Node cannot issue the BLKGETSIZE64 ioctl, so both come
 * from sysfs via the device number: /sys/dev/block/MAJ:MIN/size counts 512-byte units whatever the sector
 * size, and a partition keeps its queue settings in its parent disk's folder.
 */
export interface DeviceGeometry {
  size: number;
  sectorSize: number;
}

/** Linux's dev_t layout (glibc gnu_dev_major/minor), done with arithmetic because dev_t exceeds 32 bits. */
export function splitDeviceNumber(rdev: number): { major: number; minor: number } {
  const high = Math.floor(rdev / 2 ** 32);
  const low = rdev >>> 0;
  const major = ((low >>> 8) & 0xfff) | ((high & 0xfffff000) >>> 0);
  const minor = ((low & 0xff) | ((low >>> 12) & 0xfff00) | ((high & 0xfff) << 20)) >>> 0;
  return { major, minor };
}

export async function deviceGeometry(rdev: number, path: string): Promise<DeviceGeometry> {
  const { major, minor } = splitDeviceNumber(rdev);
  const dir = `/sys/dev/block/${major}:${minor}`;
  let sectors: number;
  try {
    sectors = Number.parseInt((await readFile(`${dir}/size`, 'utf8')).trim(), 10);
  } catch (err) {
    throw new InvalidInputError(
      `cannot find the size of block device ${path} in ${dir}: ${(err as Error).message}`,
    );
  }
  if (!Number.isSafeInteger(sectors) || sectors < 0)
    throw new InvalidInputError(`block device ${path}: unreadable size in ${dir}`);
  let sectorSize = 512;
  for (const q of [`${dir}/queue/logical_block_size`, `${dir}/../queue/logical_block_size`]) {
    try {
      const v = Number.parseInt((await readFile(q, 'utf8')).trim(), 10);
      if (Number.isSafeInteger(v) && v >= 512 && (v & (v - 1)) === 0) {
        sectorSize = v;
        break;
      }
    } catch {
      // a partition has no queue of its own: try the parent disk's
    }
  }
  return { size: sectors * 512, sectorSize };
}
