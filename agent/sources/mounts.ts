import { readFile } from 'node:fs/promises';
import { splitDeviceNumber } from './block-device.js';

/** Where a block device is mounted, from the kernel's own table (/proc/self/mountinfo). */
export interface DeviceMount {
  mountPoint: string;
  /** Read-only if either the mount or the filesystem (superblock) is. */
  readOnly: boolean;
}

/**
 * The mounts of device `major:minor` in a mountinfo text (proc(5)): "36 35 98:0 /mnt1 /mnt2 rw,noatime
 * master:1 - ext3 /dev/root rw,errors=continue". Mount points escape space, tab, newline and backslash as
 * octal (\040).
 */
export function parseMountInfo(text: string, major: number, minor: number): DeviceMount[] {
  const mounts: DeviceMount[] = [];
  for (const line of text.split('\n')) {
    const fields = line.split(' ');
    if (fields.length < 10 || fields[2] !== `${major}:${minor}`) continue;
    const dash = fields.indexOf('-', 6);
    const superOptions = dash > 0 ? (fields[dash + 3] ?? '') : '';
    const readOnly = fields[5].split(',').includes('ro') || superOptions.split(',').includes('ro');
    const mountPoint = fields[4].replace(/\\([0-7]{3})/g, (_, o: string) =>
      String.fromCharCode(Number.parseInt(o, 8)),
    );
    mounts.push({ mountPoint, readOnly });
  }
  return mounts;
}

/** The mounts of the block device with device number `rdev`; none where /proc cannot be read. */
export async function mountsOfDevice(rdev: number): Promise<DeviceMount[]> {
  let text: string;
  try {
    text = await readFile('/proc/self/mountinfo', 'utf8');
  } catch {
    return [];
  }
  const { major, minor } = splitDeviceNumber(rdev);
  return parseMountInfo(text, major, minor);
}
