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

/** Attaches `file` to a free loop device (read-only with `readOnly`) and returns the device's path. */
export function attachLoop(file: string, opts: { readOnly?: boolean } = {}): string {
  return execFileSync('losetup', ['-f', '--show', ...(opts.readOnly ? ['-r'] : []), file], {
    encoding: 'utf8',
  }).trim();
}

export function detachLoop(device: string): void {
  execFileSync('losetup', ['-d', device]);
}
