import { execFile } from 'node:child_process';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { splitDeviceNumber } from '../sources/block-device.js';

const run = promisify(execFile);

/**
 * After a whole disk is restored onto a device, the kernel still shows the partitions the device had before:
 * /dev/sdb1 may be missing, or point at the old layout, until the table is read again. udev does that on
 * close where it runs; servers in rescue systems, containers and initramfs shells often have none. So the
 * restore asks the kernel itself (BLKRRPART, through util-linux's blockdev: Node cannot issue an ioctl).
 */
export type PartitionTableOutcome =
  /** The kernel read the table again; `partitions` are the devices it shows now. */
  | { status: 'reread'; partitions: string[] }
  /** A partition, or a device that carries none (a loop device without partition scanning): nothing to do. */
  | { status: 'not-applicable' }
  /** The kernel may still show the old layout; `message` says why and what to run. */
  | { status: 'stale'; message: string };

/** Attempts while the device is briefly busy (udev probing the new table after our close). */
const BUSY_ATTEMPTS = 5;
const BUSY_WAIT_MS = 200;

export async function rereadPartitionTable(device: string): Promise<PartitionTableOutcome> {
  let rdev: number;
  try {
    rdev = (await stat(device)).rdev;
  } catch (err) {
    return { status: 'stale', message: `${device}: ${(err as Error).message}` };
  }
  const { major, minor } = splitDeviceNumber(rdev);
  const sysDir = `/sys/dev/block/${major}:${minor}`;
  if ((await readNumber(join(sysDir, 'partition'))) !== undefined) return { status: 'not-applicable' };
  const advice = `run 'partprobe ${device}' or 'blockdev --rereadpt ${device}' before using its partitions`;
  for (let attempt = 1; ; attempt++) {
    try {
      // LC_ALL=C: the kernel's answer is told apart by blockdev's message, which a locale would translate.
      await run('blockdev', ['--rereadpt', device], { env: { ...process.env, LC_ALL: 'C' } });
      return { status: 'reread', partitions: await partitionsOf(sysDir) };
    } catch (err) {
      const e = err as NodeJS.ErrnoException & { stderr?: string };
      if (e.code === 'ENOENT')
        return { status: 'stale', message: `blockdev (util-linux) is not installed: ${advice}` };
      const said = (e.stderr ?? e.message).trim();
      // EINVAL: the device takes no partition table (a loop device attached without -P, a device-mapper
      // volume); the kernel shows no partitions of it, old or new.
      if (/Invalid argument/.test(said)) return { status: 'not-applicable' };
      if (/busy/i.test(said) && attempt < BUSY_ATTEMPTS) {
        await new Promise((resolve) => setTimeout(resolve, BUSY_WAIT_MS));
        continue;
      }
      return {
        status: 'stale',
        message: `the kernel could not read the partition table of ${device} again (${said}): ${advice}`,
      };
    }
  }
}

/** /dev paths of the partitions the kernel shows under a disk's sysfs folder, in the kernel's order. */
async function partitionsOf(sysDir: string): Promise<string[]> {
  const names = await readdir(sysDir);
  const found: { name: string; number: number }[] = [];
  for (const name of names) {
    const number = await readNumber(join(sysDir, name, 'partition'));
    if (number !== undefined) found.push({ name, number });
  }
  return found.sort((a, b) => a.number - b.number).map((p) => `/dev/${p.name}`);
}

async function readNumber(path: string): Promise<number | undefined> {
  try {
    const n = Number.parseInt((await readFile(path, 'utf8')).trim(), 10);
    return Number.isSafeInteger(n) ? n : undefined;
  } catch {
    return undefined;
  }
}
