import { execFileSync } from 'node:child_process';

/**
 * Loop devices for tests of real block devices. They need root and /dev/loop-control; where the machine has
 * neither, the tests that use them show as skipped.
 */
export function canMakeLoopDevices(): boolean {
  try {
    execFileSync('losetup', ['-f'], { stdio: 'ignore' });
    return process.getuid?.() === 0;
  } catch {
    return false;
  }
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
