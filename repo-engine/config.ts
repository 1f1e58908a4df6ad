import { randomBytes } from 'node:crypto';
import { CorruptError, InvalidInputError, NotFoundError } from '../common/errors.js';
import { MAX_CHUNK_BYTES } from '../common/limits.js';
import type { StorageAdapter } from '../storage-adapters/adapter.js';
import { type ChunkerParams, HEX64 } from './manifest-codec.js';

/**
 * The repository's identity and fixed parameters, stored as JSON under the key `config`. Written once at
 * creation; the chunker parameters never change afterwards, because dedup only works between snapshots cut
 * with the same parameters.
 */
export const CONFIG_KEY = 'config';
export const REPOSITORY_FORMAT_VERSION = 1;
export const DEFAULT_CHUNKER: ChunkerParams = { min: 256 * 1024, avg: 1024 * 1024, max: 4 * 1024 * 1024 };

export interface RepositoryConfig {
  formatVersion: number;
  /** 64 hex, random: ties an index file to the storage it describes. */
  id: string;
  chunker: ChunkerParams;
  compression: 'zstd-1';
}

export function checkChunkerParams(c: ChunkerParams): ChunkerParams {
  const ok =
    [c?.min, c?.avg, c?.max].every((v) => Number.isSafeInteger(v) && v > 0) &&
    c.min <= c.avg &&
    c.avg <= c.max &&
    c.max <= MAX_CHUNK_BYTES &&
    c.min >= 64;
  if (!ok)
    throw new InvalidInputError(
      `invalid chunker parameters ${JSON.stringify(c)}: need 64 <= min <= avg <= max <= ${MAX_CHUNK_BYTES}`,
    );
  return { min: c.min, avg: c.avg, max: c.max };
}

export function parseConfig(bytes: Buffer): RepositoryConfig {
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(bytes.toString('utf8')) as Record<string, unknown>;
  } catch {
    throw new CorruptError('repository config is not JSON');
  }
  if (o?.formatVersion !== REPOSITORY_FORMAT_VERSION) {
    throw new CorruptError(
      `repository format version ${String(o?.formatVersion)} is not supported (this build reads ${REPOSITORY_FORMAT_VERSION})`,
    );
  }
  if (typeof o.id !== 'string' || !HEX64.test(o.id))
    throw new CorruptError('repository config has no valid id');
  if (o.compression !== 'zstd-1')
    throw new CorruptError(`unknown compression ${String(o.compression)} in repository config`);
  let chunker: ChunkerParams;
  try {
    chunker = checkChunkerParams(o.chunker as ChunkerParams);
  } catch {
    throw new CorruptError('repository config has invalid chunker parameters');
  }
  return { formatVersion: REPOSITORY_FORMAT_VERSION, id: o.id, chunker, compression: 'zstd-1' };
}

/**
 * Reads the config, or writes a new one when storage holds none and `create` allows it. Never overwrites:
 * a second creator would orphan every chunk's meaning, so creation only happens when the key is absent.
 */
export async function loadOrCreateConfig(
  storage: StorageAdapter,
  opts: { create: boolean; chunker?: ChunkerParams },
): Promise<{ config: RepositoryConfig; created: boolean }> {
  const existing = await storage.stat(CONFIG_KEY);
  if (existing) {
    const config = parseConfig(await storage.getBytes(CONFIG_KEY));
    return { config, created: false };
  }
  if (!opts.create) throw new NotFoundError(`no repository at ${storage.description} (no config)`);
  const config: RepositoryConfig = {
    formatVersion: REPOSITORY_FORMAT_VERSION,
    id: randomBytes(32).toString('hex'),
    chunker: checkChunkerParams(opts.chunker ?? DEFAULT_CHUNKER),
    compression: 'zstd-1',
  };
  await storage.put(CONFIG_KEY, Buffer.from(`${JSON.stringify(config, null, 2)}\n`));
  return { config, created: true };
}
