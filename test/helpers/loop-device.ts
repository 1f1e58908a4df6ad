import { execFileSync } from 'node:child_process';

/**
 * Loop devices for tests of real block devices. They need root and /dev/loop-control; where the machine has
 * neither, the tests that use them show as skipped.
 */
export function canMakeLoopDevices(): boolean {
  return loopDevicesMissing() === undefined;
}

/** Why loop devices cannot be made here, for the title of a skipped test; undefined when they can. */
export function loopDevicesMissing(): string | undefined {
  if (process.getuid?.() !== 0) return 'loop devices need root';
  try {
    execFileSync('losetup', ['-f'], { stdio: 'ignore' });
    return undefined;
  } catch {
    return 'losetup -f finds no free loop device';
  }
}

/** `title`, marked with the reason when the test is skipped for want of loop devices. */
export function loopTitle(title: string): string {
  const missing = loopDevicesMissing();
  return missing ? `${title} (skipped: ${missing})` : title;
}

/**
 * Attaches `file` to a free loop device and returns the device's path: read-only with `readOnly`, with the
 * kernel scanning it for a partition table (losetup -P) with `partitions`.
 */
export function attachLoop(file: string, opts: { readOnly?: boolean; partitions?: boolean } = {}): string {
  const flags = [...(opts.readOnly ? ['-r'] : []), ...(opts.partitions ? ['-P'] : [])];
  return execFileSync('losetup', ['-f', '--show', ...flags, file], { encoding: 'utf8' }).trim();
}

export function detachLoop(device: string): void {
  execFileSync('losetup', ['-d', device]);
}
