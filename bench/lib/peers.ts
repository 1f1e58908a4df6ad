import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { folderBytes, type Measurement, measure } from './measure.js';

/**
 * restic and borg driven the way a sysadmin backs up a whole disk: the image on standard input under one
 * constant name, so every night is the same "file" and each tool dedups by content alone.
 */
export interface PeerStep {
  step: string;
  m: Measurement;
  repoBytes?: number;
}

export interface Peer {
  name: string;
  init(): Promise<void>;
  backup(image: string, night: number): Promise<PeerStep>;
  /** Restores the newest snapshot to `outFile`. */
  restore(outFile: string, night: number): Promise<PeerStep>;
  repoBytes(): Promise<number>;
}

/** Installs restic, borgbackup and GNU time from Debian when missing, without asking. */
export function ensurePeerTools(): void {
  const missing = [
    ['restic', 'restic'],
    ['borg', 'borgbackup'],
    ['/usr/bin/time', 'time'],
    ['mke2fs', 'e2fsprogs'],
  ].filter(([cmd]) => {
    try {
      execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
      return false;
    } catch {
      return true;
    }
  });
  if (missing.length === 0) return;
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  execFileSync('apt-get', ['update', '-qq'], { stdio: 'inherit', env });
  execFileSync('apt-get', ['install', '-y', '-qq', ...missing.map(([, pkg]) => pkg)], {
    stdio: 'inherit',
    env,
  });
}

export function restic(dir: string): Peer {
  const repo = join(dir, 'restic-repo');
  const env = {
    RESTIC_PASSWORD: 'bench',
    RESTIC_REPOSITORY: repo,
    RESTIC_CACHE_DIR: join(dir, 'restic-cache'),
  };
  return {
    name: 'restic',
    async init() {
      rmSync(dir, { recursive: true, force: true });
      mkdirSync(dir, { recursive: true });
      await measure('restic', ['init', '--repository-version', '2'], { env });
    },
    async backup(image, night) {
      const m = await measure(
        'restic',
        ['backup', '--stdin', '--stdin-filename', 'disk.img', '--host', 'bench', '--tag', `night${night}`],
        {
          env,
          stdinFile: image,
        },
      );
      return { step: `backup night${night}`, m, repoBytes: await folderBytes(repo) };
    },
    async restore(outFile, night) {
      const target = join(dir, 'restore');
      rmSync(target, { recursive: true, force: true });
      const m = await measure('restic', ['restore', 'latest', '--target', target], { env });
      execFileSync('mv', [join(target, 'disk.img'), outFile]);
      return { step: `restore night${night}`, m };
    },
    repoBytes: () => folderBytes(repo),
  };
}

export function borg(dir: string, compression: 'lz4' | 'zstd'): Peer {
  const repo = join(dir, `borg-${compression}-repo`);
  const env = {
    BORG_REPO: repo,
    BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK: 'yes',
    BORG_BASE_DIR: join(dir, `borg-${compression}-base`),
  };
  let last = '';
  return {
    name: `borg ${compression}`,
    async init() {
      rmSync(dir, { recursive: true, force: true });
      mkdirSync(dir, { recursive: true });
      await measure('borg', ['init', '-e', 'none', repo], { env });
    },
    async backup(image, night) {
      last = `night${night}`;
      const m = await measure(
        'borg',
        ['create', '--compression', compression, '--stdin-name', 'disk.img', `::${last}`, '-'],
        {
          env,
          stdinFile: image,
        },
      );
      return { step: `backup night${night}`, m, repoBytes: await folderBytes(repo) };
    },
    async restore(outFile, night) {
      const target = join(dir, 'restore');
      rmSync(target, { recursive: true, force: true });
      mkdirSync(target);
      const m = await measure('borg', ['extract', '--sparse', `::${last}`], { env, cwd: target });
      const [name] = readdirSync(target);
      execFileSync('mv', [join(target, name), outFile]);
      return { step: `restore night${night}`, m };
    },
    repoBytes: () => folderBytes(repo),
  };
}
