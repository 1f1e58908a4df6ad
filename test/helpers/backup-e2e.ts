import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { compress, decompress } from 'zstd-napi';
import type { DiskvaultClient } from '../../agent/client.js';
import { REPOSITORY_KEY_FILE } from '../../api/repository-key-file.js';
import { decodeStoredChunk, encodeStoredChunk } from '../../repo-engine/chunk-format.js';
import { parseConfig } from '../../repo-engine/config.js';
import {
  MANIFEST_ENTRY_BYTES,
  type ManifestHeader,
  ManifestReader,
} from '../../repo-engine/manifest-codec.js';
import { deriveSubkeys } from '../../repo-engine/object-crypto.js';
import { type ObjectCodec, objectCodec } from '../../repo-engine/stored-objects.js';
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
  opts: {
    stdinFile?: string;
    /** A descriptor for the child's standard input, as a shell's `< FILE` gives (the caller closes it). */
    stdinFd?: number;
    onStderr?: (text: string, kill: () => void) => void;
  } = {},
): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(DISKVAULT, args, {
      env: { ...process.env, ...env },
      stdio: [opts.stdinFd ?? (opts.stdinFile ? 'pipe' : 'ignore'), 'pipe', 'pipe'],
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

/** SHA-256 of snapshot `id` restored by the real CLI with the server's admin token (the file is removed again). */
export async function restoredHash(
  server: { url: string; adminToken: string },
  id: string,
  dir: string,
): Promise<string> {
  const out = join(dir, `restored-${id.slice(0, 8)}.img`);
  const r = await runCli(['restore', id, out, '--json'], {
    DISKVAULT_SERVER: server.url,
    DISKVAULT_TOKEN: server.adminToken,
  });
  if (r.code !== 0) throw new Error(`restore ${id} failed: ${r.stderr}`);
  const hash = await sha256File(out);
  await rm(out, { force: true });
  return hash;
}

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

/** The header and chunk list of a stored snapshot, read over HTTP. */
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

/**
 * How the local repository in `dataDir` names and seals objects, from its config and (when encrypted) the
 * key in the data folder: what a test needs to find a chunk's object, as the server does.
 */
export async function storedObjectsOf(dataDir: string): Promise<ObjectCodec> {
  const config = parseConfig(await readFile(join(dataDir, 'storage', 'config')));
  if (!config.encryption) return objectCodec(undefined, config.chunkFanout);
  const key = Buffer.from((await readFile(join(dataDir, REPOSITORY_KEY_FILE), 'utf8')).trim(), 'hex');
  return objectCodec(deriveSubkeys(key, config.id), config.chunkFanout);
}

/** The file holding chunk `id`'s object in the local repository in `dataDir`. */
export async function storedChunkFile(dataDir: string, id: string): Promise<string> {
  return join(dataDir, 'storage', (await storedObjectsOf(dataDir)).chunkKey(id));
}

/**
 * Flips one byte near the end of a chunk's object in a local repository, as it lies in storage. With
 * `resealed`, the byte is flipped in the chunk's stored bytes and an encrypted object sealed again: an
 * object that opens but holds the wrong content (what the agent's hash check is for).
 */
export async function corruptStoredChunk(
  dataDir: string,
  id: string,
  opts: { resealed?: boolean } = {},
): Promise<void> {
  const path = await storedChunkFile(dataDir, id);
  if (opts.resealed) {
    const codec = await storedObjectsOf(dataDir);
    const key = codec.chunkKey(id);
    const { stored } = codec.openChunk(key, await readFile(path), id);
    // Well formed in every way the server checks (one zstd frame declaring the right length), only the
    // content is another: one byte of the raw chunk flipped before it is compressed again.
    const chunk = decodeStoredChunk(stored, id);
    const raw = Buffer.from(chunk.encoding === 'zstd' ? decompress(chunk.payload) : chunk.payload);
    raw[raw.length - 10] ^= 0xff;
    const payload = chunk.encoding === 'zstd' ? compress(raw) : raw;
    await writeFile(path, codec.sealChunk(id, [encodeStoredChunk(chunk.encoding, raw.length, payload)]));
    return;
  }
  const fh = await open(path, 'r+');
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
