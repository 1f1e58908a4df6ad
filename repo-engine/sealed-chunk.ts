import { createHash } from 'node:crypto';
import { zstdCompressBound } from '../common/limits.js';

/**
 * An end-to-end sealed chunk: what an agent holding a key file uploads instead of a chunk's bytes, and what
 * the server stores and hands back as is. The server can check its structure and that its id belongs to
 * the key's dedup domain, never its content (docs/repository-format.md, "End-to-end chunks").
 *
 *   magic      3 bytes  "DVS"
 *   version    1 byte   1
 *   flags      1 byte   bit 0: the plaintext was zstd-compressed before sealing; other bits 0
 *   keyId      16 bytes the key's public id (derived from the key, reveals nothing of it)
 *   rawLength  u32 BE   the chunk's length before compression (what the manifest's entry says)
 *   salt       16 bytes random, per sealing: the chunk key is HKDF-SHA256(chunk key, salt)
 *   keyedId    32 bytes HMAC-SHA256(id key, raw bytes): the chunk's identity inside the key's domain
 *   ciphertext AES-256-GCM of the (compressed) bytes, then its 16-byte tag; AAD = the 73 header bytes
 *
 * The chunk's id in the repository (manifests, the index, URLs) is domainChunkId(keyId, keyedId): bound to
 * the key, so no upload in another key's domain (or a plaintext upload, whose id is a plain SHA-256) can
 * ever have it.
 */
export const SEALED_CHUNK_MAGIC = Buffer.from('DVS', 'ascii');
export const SEALED_CHUNK_VERSION = 1;
export const SEALED_CHUNK_HEADER_BYTES = 73;
export const SEALED_CHUNK_TAG_BYTES = 16;
export const KEY_ID_BYTES = 16;
export const SEALED_FLAG_ZSTD = 1;
/** Content type of a sealed chunk upload or download. */
export const SEALED_CHUNK_CONTENT_TYPE = 'application/x-diskvault-sealed-chunk';

const DOMAIN_LABEL = Buffer.from('diskvault e2e chunk v1\0', 'utf8');
const KEY_ID_LABEL = Buffer.from('diskvault e2e key id v1\0', 'utf8');

export interface SealedChunkHeader {
  zstd: boolean;
  keyId: string;
  rawLength: number;
  salt: Buffer;
  keyedId: Buffer;
}

/** The repository id of a chunk of key `keyId` (32 hex) with keyed id `keyedId`: SHA-256(label, keyId, keyedId). */
export function domainChunkId(keyId: Buffer, keyedId: Uint8Array): Buffer {
  return createHash('sha256').update(DOMAIN_LABEL).update(keyId).update(keyedId).digest();
}

/**
 * The public key id proven by an upload proof (a secret derived from the key, sent at session start):
 * the first 16 bytes of SHA-256(label, proof). Anyone may read a key id; only a holder of the key can
 * produce a proof for it, so only a holder can open an upload session in the key's domain.
 */
export function keyIdOfProof(proof: Buffer): string {
  return createHash('sha256')
    .update(KEY_ID_LABEL)
    .update(proof)
    .digest()
    .subarray(0, KEY_ID_BYTES)
    .toString('hex');
}

/** Most bytes a sealed chunk of at most `maxRaw` raw bytes can take. */
export function sealedChunkBound(maxRaw: number): number {
  return SEALED_CHUNK_HEADER_BYTES + zstdCompressBound(maxRaw) + SEALED_CHUNK_TAG_BYTES;
}

export function writeSealedChunkHeader(out: Buffer, h: SealedChunkHeader): void {
  SEALED_CHUNK_MAGIC.copy(out, 0);
  out[3] = SEALED_CHUNK_VERSION;
  out[4] = h.zstd ? SEALED_FLAG_ZSTD : 0;
  Buffer.from(h.keyId, 'hex').copy(out, 5);
  out.writeUInt32BE(h.rawLength, 21);
  h.salt.copy(out, 25);
  Buffer.from(h.keyedId).copy(out, 41);
}

/** The header, or why `bytes` is not a sealed chunk (structure only: nothing here needs a key). */
export function parseSealedChunk(bytes: Buffer): SealedChunkHeader | string {
  if (bytes.length < SEALED_CHUNK_HEADER_BYTES + SEALED_CHUNK_TAG_BYTES)
    return `a sealed chunk is at least ${SEALED_CHUNK_HEADER_BYTES + SEALED_CHUNK_TAG_BYTES} bytes, not ${bytes.length}`;
  if (!bytes.subarray(0, 3).equals(SEALED_CHUNK_MAGIC)) return 'it is not a sealed chunk (no DVS header)';
  if (bytes[3] !== SEALED_CHUNK_VERSION)
    return `it is sealed chunk version ${bytes[3]}, not ${SEALED_CHUNK_VERSION}`;
  if ((bytes[4] & ~SEALED_FLAG_ZSTD) !== 0) return `it has unknown flags ${bytes[4]}`;
  return {
    zstd: (bytes[4] & SEALED_FLAG_ZSTD) !== 0,
    keyId: bytes.toString('hex', 5, 21),
    rawLength: bytes.readUInt32BE(21),
    salt: bytes.subarray(25, 41),
    keyedId: bytes.subarray(41, 73),
  };
}

/**
 * Why `bytes` cannot be the sealed chunk `id` of key `keyId` holding at most `maxRaw` raw bytes, or
 * undefined: every check that needs no key (header, lengths, id bound to the key and the keyed id).
 * `expectRawLength`, when given, is what the stored object's own header says.
 */
export function sealedChunkProblem(
  bytes: Buffer,
  id: string,
  maxRaw: number,
  opts: { keyId?: string; expectRawLength?: number } = {},
): string | undefined {
  const h = parseSealedChunk(bytes);
  if (typeof h === 'string') return h;
  if (opts.keyId !== undefined && h.keyId !== opts.keyId)
    return `it is sealed with key ${h.keyId}, the session's key is ${opts.keyId}`;
  if (h.rawLength === 0 || h.rawLength > maxRaw)
    return `it claims ${h.rawLength} raw bytes (1 to ${maxRaw} allowed)`;
  if (opts.expectRawLength !== undefined && h.rawLength !== opts.expectRawLength)
    return `it claims ${h.rawLength} raw bytes, its stored header ${opts.expectRawLength}`;
  const body = bytes.length - SEALED_CHUNK_HEADER_BYTES - SEALED_CHUNK_TAG_BYTES;
  if (!h.zstd && body !== h.rawLength) return `it holds ${body} sealed bytes for ${h.rawLength} raw bytes`;
  if (h.zstd && body > zstdCompressBound(h.rawLength))
    return `it holds ${body} sealed bytes, more than zstd can make of ${h.rawLength}`;
  const bound = domainChunkId(Buffer.from(h.keyId, 'hex'), h.keyedId).toString('hex');
  if (bound !== id) return `its id in key ${h.keyId}'s domain is ${bound}, not ${id}`;
  return undefined;
}
