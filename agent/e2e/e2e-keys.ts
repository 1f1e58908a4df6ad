import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes } from 'node:crypto';
import { CorruptError } from '../../common/errors.js';
import { KEY_ID_BYTES, keyIdOfProof } from '../../repo-engine/sealed-chunk.js';

/**
 * The keys an end-to-end key file's master key yields, one per purpose, each HKDF-SHA256(master, no salt,
 * its label): knowing one (the server learns the upload proof) reveals nothing of the others.
 *
 *   idKey       "diskvault e2e id v1"        HMAC-SHA256 key of chunk ids (the keyed id)
 *   chunkKey    "diskvault e2e chunk v1"     ikm of every sealed chunk's own AES-256-GCM key
 *   manifestKey "diskvault e2e manifest v1"  ikm of every snapshot's sealed secrets' key
 *   proof       "diskvault e2e proof v1"     sent at session start; its hash is the public key id
 */
export interface E2eKeys {
  /** 32 hex: the public key id (keyIdOfProof(proof)). */
  keyId: string;
  keyIdBytes: Buffer;
  idKey: Buffer;
  chunkKey: Buffer;
  manifestKey: Buffer;
  proof: Buffer;
}

/** What a worker thread needs to hash and seal chunks (plain buffers survive structured cloning). */
export interface E2eWorkerKeys {
  keyId: string;
  idKey: Uint8Array;
  chunkKey: Uint8Array;
}

const derive = (master: Buffer, label: string) =>
  Buffer.from(hkdfSync('sha256', master, Buffer.alloc(0), label, 32));

export function deriveE2eKeys(master: Buffer): E2eKeys {
  if (master.length !== 32) throw new Error('an end-to-end master key is 32 bytes');
  const proof = derive(master, 'diskvault e2e proof v1');
  const keyId = keyIdOfProof(proof);
  return {
    keyId,
    keyIdBytes: Buffer.from(keyId, 'hex'),
    idKey: derive(master, 'diskvault e2e id v1'),
    chunkKey: derive(master, 'diskvault e2e chunk v1'),
    manifestKey: derive(master, 'diskvault e2e manifest v1'),
    proof,
  };
}

export function keyedId(idKey: Uint8Array, raw: Uint8Array): Buffer {
  return createHmac('sha256', idKey).update(raw).digest();
}

/** The secrets of a snapshot that only the key opens. */
export interface SealedSecrets {
  /** SHA-256 (hex) of the whole image. */
  sha256: string;
}

const SECRETS_LABEL = 'diskvault e2e manifest v1';
const SECRETS_SALT_BYTES = 16;
const ZERO_NONCE = Buffer.alloc(12);

/**
 * What binds a snapshot's sealed secrets to it: host, disk, size and chunk count, so secrets moved to
 * another snapshot do not open there (the image's hash then catches any other swap at restore).
 */
export function secretsContext(h: { host: string; disk: string; size: number; chunkCount: number }): Buffer {
  return Buffer.from(`${SECRETS_LABEL}\0${h.host}\0${h.disk}\0${h.size}\0${h.chunkCount}`, 'utf8');
}

/**
 * base64(salt 16 || AES-256-GCM(HKDF(manifestKey, salt, label), nonce 0, JSON secrets) || tag): a fresh key
 * per sealing, so the fixed nonce is never used twice with one key.
 */
export function sealSecrets(keys: E2eKeys, secrets: SealedSecrets, context: Buffer): string {
  const salt = randomBytes(SECRETS_SALT_BYTES);
  const key = Buffer.from(hkdfSync('sha256', keys.manifestKey, salt, SECRETS_LABEL, 32));
  const cipher = createCipheriv('aes-256-gcm', key, ZERO_NONCE);
  cipher.setAAD(context);
  const body = Buffer.concat([cipher.update(JSON.stringify(secrets), 'utf8'), cipher.final()]);
  return Buffer.concat([salt, body, cipher.getAuthTag()]).toString('base64');
}

export function openSecrets(keys: E2eKeys, sealed: string, context: Buffer, snapshot: string): SealedSecrets {
  const bytes = Buffer.from(sealed, 'base64');
  const fail = () =>
    new CorruptError(
      `snapshot ${snapshot}: its sealed secrets do not open with this key (damaged or moved)`,
      {
        snapshot,
      },
    );
  if (bytes.length < SECRETS_SALT_BYTES + 16) throw fail();
  const salt = bytes.subarray(0, SECRETS_SALT_BYTES);
  const key = Buffer.from(hkdfSync('sha256', keys.manifestKey, salt, SECRETS_LABEL, 32));
  const decipher = createDecipheriv('aes-256-gcm', key, ZERO_NONCE);
  decipher.setAAD(context);
  decipher.setAuthTag(bytes.subarray(bytes.length - 16));
  let text: string;
  try {
    text = Buffer.concat([
      decipher.update(bytes.subarray(SECRETS_SALT_BYTES, bytes.length - 16)),
      decipher.final(),
    ]).toString('utf8');
  } catch {
    throw fail();
  }
  const o = JSON.parse(text) as SealedSecrets;
  if (typeof o.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(o.sha256)) throw fail();
  return o;
}

export { KEY_ID_BYTES };
