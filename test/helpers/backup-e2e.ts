import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import type { DiskvaultClient } from '../../agent/client.js';
import {
  MANIFEST_ENTRY_BYTES,
  type ManifestHeader,
  ManifestReader,
} from '../../repo-engine/manifest-codec.js';
import { DISKVAULT } from './diskvault-command.js';
import { storageListing } from './reliability-harness.js';

// Running the real `diskvault backup` CLI as a child process, and reading back what it stored.

export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
  /** The --json summary line, when there is one. */
  summary?: Record<string, unknown> & {
    snapshot: string;
    size: number;
    bytesUploaded: number;
    newChunks: number;
    newBytes: number;
    chunks: number;
  };
}

export function runCli(
  args: string[],
  env: Record<string, string>,
  opts: { stdinFile?: string; onStderr?: (text: string, kill: () => void) => void } = {},
): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(DISKVAULT, args, {
      env: { ...process.env, ...env },
      stdio: [opts.stdinFile ? 'pipe' : 'ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
      opts.onStderr?.(stderr, () => child.kill('SIGKILL'));
    });
    if (opts.stdinFile) {
      const input = createReadStream(opts.stdinFile);
      input.pipe(child.stdin!);
      child.stdin!.on('error', () => {}); // the child may die first (kill tests)
    }
    child.on('error', reject);
    child.on('close', (code) => {
      const line = stdout.split('\n').find((l) => l.startsWith('{"type":"summary"'));
      resolve({ code, stdout, stderr, ...(line ? { summary: JSON.parse(line) } : {}) });
    });
  });
}

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const b of createReadStream(path, { highWaterMark: 4 << 20 })) h.update(b as Buffer);
  return h.digest('hex');
}

/** The header and chunk list of a stored snapshot, read over HTTP. */
/**
 * Backs up `files` in order as successive snapshots of one host and disk with the real CLI (each dated when
 * it ran, so later files are newer), and returns their snapshot ids; a backup that fails throws with its stderr.
 */
export async function backupNights(
  env: Record<string, string>,
  files: string[],
  host: string,
  disk: string,
): Promise<string[]> {
  const ids: string[] = [];
  for (const file of files) {
    const b = await runCli(['backup', file, '--host', host, '--disk', disk, '--json'], env);
    if (b.code !== 0 || !b.summary) throw new Error(`backup of ${file} failed (${b.code}): ${b.stderr}`);
    ids.push(b.summary.snapshot);
  }
  return ids;
}

export async function readSnapshot(
  client: DiskvaultClient,
  id: string,
): Promise<{ header: ManifestHeader; entries: { id: string; length: number }[] }> {
  const reader = await ManifestReader.open(await client.getManifest(id), 'wire');
  const entries: { id: string; length: number }[] = [];
  for await (const batch of reader.entryBatches()) {
    for (let at = 0; at < batch.length; at += MANIFEST_ENTRY_BYTES) {
      entries.push({ id: batch.toString('hex', at, at + 32), length: batch.readUInt32BE(at + 32) });
    }
  }
  return { header: reader.header, entries };
}

/** Chunk objects a local repository holds (files under storage/chunks, temp files of puts not counted). */
export async function countStoredChunks(dataDir: string): Promise<number> {
  const files = [...(await storageListing(dataDir)).keys()];
  return files.filter((f) => f.startsWith('chunks/') && /\/[0-9a-f]{64}$/.test(f)).length;
}

/** Flips one byte near the end of a chunk's object in a local repository (storage/chunks/ab/cd/<id>). */
export async function corruptStoredChunk(dataDir: string, id: string): Promise<void> {
  const fh = await open(join(dataDir, 'storage', 'chunks', id.slice(0, 2), id.slice(2, 4), id), 'r+');
  try {
    const { size } = await fh.stat();
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, size - 10);
    b[0] ^= 0xff;
    await fh.write(b, 0, 1, size - 10);
  } finally {
    await fh.close();
  }
}
