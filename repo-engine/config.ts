import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { CorruptError, InvalidInputError, NotFoundError } from '../common/errors.js';
import { MAX_CHUNK_BYTES } from '../common/limits.js';
import type { StorageAdapter } from '../storage-adapters/adapter.js';
import { type ChunkerParams, HEX64 } from './manifest-codec.js';
import {
  deriveSubkeys,
  keyCheckMatches,
  keyCheckValue,
  REPOSITORY_KEY_BYTES,
  type RepositorySubkeys,
} from './object-crypto.js';
import { KeyRequiredError, type RepositoryKeyStore, WrongKeyError } from './repository-key.js';
import { type ChunkFanout, NEW_REPOSITORY_CHUNK_FANOUT, UNNAMED_CHUNK_FANOUT } from './stored-objects.js';

/**
 * The repository's identity and fixed parameters, stored as plaintext JSON under the key `config`. Written
 * once at creation; the chunker parameters never change afterwards, because dedup only works between
 * snapshots cut with the same parameters. Format 1 stores objects as they are; format 2 seals every object
 * with keys derived from a repository key kept outside storage (stored-objects.ts), and the config holds
 * only a check value that recognises that key.
 */
export const CONFIG_KEY = 'config';
export const PLAINTEXT_FORMAT_VERSION = 1;
export const ENCRYPTED_FORMAT_VERSION = 2;
/** The format new repositories get by default. */
export const REPOSITORY_FORMAT_VERSION = ENCRYPTED_FORMAT_VERSION;
export const ENCRYPTION_SCHEME = 'aes-256-gcm-hkdf-sha256';
export type EncryptionChoice = 'aes-256-gcm' | 'none';
export const DEFAULT_CHUNKER: ChunkerParams = { min: 256 * 1024, avg: 1024 * 1024, max: 4 * 1024 * 1024 };

export interface RepositoryConfig {
  formatVersion: number;
  /** 64 hex, random: ties an index file to the storage it describes. */
  id: string;
  chunker: ChunkerParams;
  compression: 'zstd-1';
  /** Folder levels above each chunk object (stored-objects.ts); a stored config without the field means 2. */
  chunkFanout: ChunkFanout;
  /**
   * Format 2 only: how objects are sealed; HMAC of a fixed label under the key's check subkey (recognises
   * the key); HMAC of the other fields under the same subkey (the plaintext config cannot be changed).
   */
  encryption?: { scheme: typeof ENCRYPTION_SCHEME; keyCheck: string; configMac: string };
}

/**
 * HMAC-SHA256 under the check subkey of every field but the MAC itself, in a fixed order. `chunkFanout` is
 * appended only when it is not the value an absent field means, so configs written before the field existed
 * keep their MAC, and any edit that changes the fanout a config means breaks it.
 */
function configMac(config: RepositoryConfig, keys: RepositorySubkeys): string {
  const fields = JSON.stringify([
    config.formatVersion,
    config.id,
    config.chunker.min,
    config.chunker.avg,
    config.chunker.max,
    config.compression,
    config.encryption?.scheme,
    config.encryption?.keyCheck,
    ...(config.chunkFanout === UNNAMED_CHUNK_FANOUT ? [] : [config.chunkFanout]),
  ]);
  return createHmac('sha256', keys.check)
    .update('diskvault repository config v1\n')
    .update(fields)
    .digest('hex');
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
  const version = o?.formatVersion;
  if (version !== PLAINTEXT_FORMAT_VERSION && version !== ENCRYPTED_FORMAT_VERSION) {
    throw new CorruptError(
      `repository format version ${String(version)} is not supported (this build reads ${PLAINTEXT_FORMAT_VERSION} and ${ENCRYPTED_FORMAT_VERSION})`,
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
  if (o.chunkFanout !== undefined && o.chunkFanout !== 1 && o.chunkFanout !== 2)
    throw new CorruptError(`repository config has an unknown chunkFanout ${JSON.stringify(o.chunkFanout)}`);
  const config: RepositoryConfig = {
    formatVersion: version,
    id: o.id,
    chunker,
    compression: 'zstd-1',
    chunkFanout: (o.chunkFanout as ChunkFanout | undefined) ?? UNNAMED_CHUNK_FANOUT,
  };
  if (version === ENCRYPTED_FORMAT_VERSION) {
    const e = o.encryption as Record<string, unknown> | undefined;
    if (e?.scheme !== ENCRYPTION_SCHEME)
      throw new CorruptError(`unknown encryption scheme ${String(e?.scheme)} in repository config`);
    if (typeof e.keyCheck !== 'string' || !HEX64.test(e.keyCheck))
      throw new CorruptError('repository config has no valid key check value');
    if (typeof e.configMac !== 'string' || !HEX64.test(e.configMac))
      throw new CorruptError('repository config has no valid MAC');
    config.encryption = { scheme: ENCRYPTION_SCHEME, keyCheck: e.keyCheck, configMac: e.configMac };
  }
  return config;
}

/**
 * Reads the config, or writes a new one when storage holds none and `create` allows it. Never overwrites:
 * a second creator would orphan every chunk's meaning, so creation only happens when the key is absent.
 */
/**
 * An encrypted repository is created with the key in `keyStore` (made and saved there first when it holds
 * none), and opened only with the key whose check value the config holds: KeyRequiredError or WrongKeyError
 * otherwise, naming where the key is expected. Returns the subkeys of an encrypted repository.
 */
export async function loadOrCreateConfig(
  storage: StorageAdapter,
  opts: {
    create: boolean;
    chunker?: ChunkerParams;
    encryption?: EncryptionChoice;
    keyStore?: RepositoryKeyStore;
  },
): Promise<{ config: RepositoryConfig; created: boolean; keys?: RepositorySubkeys }> {
  const existing = await storage.stat(CONFIG_KEY);
  if (existing) {
    const config = parseConfig(await storage.getBytes(CONFIG_KEY));
    if (!config.encryption) {
      // A plaintext config beside a repository key: whoever can write to storage, without the key, could
      // have put it there in place of an encrypted repository's, so that new chunks are stored in the
      // clear. Only an operator who says the repository is plaintext (`--encryption none`) opens it so.
      const key = opts.encryption === 'none' ? undefined : await opts.keyStore?.load();
      if (key)
        throw new CorruptError(
          `the repository config on ${storage.description} says it is not encrypted, but a repository key exists (${opts.keyStore?.location}): a config replaced in storage would have new backups stored unencrypted. If this repository really is plaintext, start the server with --encryption none`,
        );
      return { config, created: false };
    }
    const keyStore = opts.keyStore;
    const key = await keyStore?.load();
    if (!keyStore || !key) throw new KeyRequiredError(storage.description, keyStore?.location);
    const keys = deriveSubkeys(key, config.id);
    if (!keyCheckMatches(keys, config.encryption.keyCheck))
      throw new WrongKeyError(storage.description, keyStore.location);
    if (!macMatches(configMac(config, keys), config.encryption.configMac))
      throw new CorruptError(
        `the repository config on ${storage.description} has been changed: its MAC does not match`,
      );
    return { config, created: false, keys };
  }
  if (!opts.create) throw new NotFoundError(`no repository at ${storage.description} (no config)`);
  const encrypt = (opts.encryption ?? (opts.keyStore ? 'aes-256-gcm' : 'none')) === 'aes-256-gcm';
  const config: RepositoryConfig = {
    formatVersion: encrypt ? ENCRYPTED_FORMAT_VERSION : PLAINTEXT_FORMAT_VERSION,
    id: randomBytes(32).toString('hex'),
    chunker: checkChunkerParams(opts.chunker ?? DEFAULT_CHUNKER),
    compression: 'zstd-1',
    chunkFanout: NEW_REPOSITORY_CHUNK_FANOUT,
  };
  let keys: RepositorySubkeys | undefined;
  if (encrypt) {
    if (!opts.keyStore) throw new Error('an encrypted repository is created with a key store');
    // Saved before the config names it: a crash in between leaves a key the next start reuses.
    let key = await opts.keyStore.load();
    if (!key) {
      key = randomBytes(REPOSITORY_KEY_BYTES);
      await opts.keyStore.save(key);
    }
    keys = deriveSubkeys(key, config.id);
    config.encryption = { scheme: ENCRYPTION_SCHEME, keyCheck: keyCheckValue(keys), configMac: '' };
    config.encryption.configMac = configMac(config, keys);
  }
  await storage.put(CONFIG_KEY, Buffer.from(`${JSON.stringify(config, null, 2)}\n`));
  return { config, created: true, ...(keys ? { keys } : {}) };
}

/** Two MACs in hex compared in constant time (a MAC is a secret's output). */
function macMatches(expected: string, found: string): boolean {
  const a = Buffer.from(expected, 'hex');
  const b = Buffer.from(found, 'hex');
  return a.length === b.length && timingSafeEqual(a, b);
}
