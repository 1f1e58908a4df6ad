import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto';
import { updateInto } from '../../common/cipher-pieces.js';
import { CorruptError, HashMismatchError } from '../../common/errors.js';
import {
  domainChunkId,
  parseSealedChunk,
  SEALED_CHUNK_HEADER_BYTES,
  SEALED_CHUNK_TAG_BYTES,
  writeSealedChunkHeader,
} from '../../repo-engine/sealed-chunk.js';
import { keyedId } from './e2e-keys.js';

/**
 * Sealing and opening one chunk (format in repo-engine/sealed-chunk.ts and docs/repository-format.md).
 * Every sealing draws a fresh 16-byte salt and derives the chunk's own AES-256-GCM key from it with HKDF, so
 * a key seals exactly one message and the nonce is the constant zero (the scheme age uses for its payload
 * key): no nonce bookkeeping across agents sharing a key, and 2^64 sealings before a salt collision is even
 * likely. The AAD is the whole header, binding the ciphertext to its key id, keyed id, lengths and flags.
 */
const CHUNK_LABEL = 'diskvault e2e chunk v1';
const ZERO_NONCE = Buffer.alloc(12);

function chunkCipherKey(chunkKey: Uint8Array, salt: Uint8Array): Buffer {
  return Buffer.from(hkdfSync('sha256', chunkKey, salt, CHUNK_LABEL, 32));
}

/** Bytes a sealed chunk adds to its body: the header and the tag. */
export const SEALED_CHUNK_OVERHEAD = SEALED_CHUNK_HEADER_BYTES + SEALED_CHUNK_TAG_BYTES;

/**
 * The sealed chunk of `raw` whose keyed id is `kid`: `body` is what gets encrypted (the zstd frame when
 * `zstd`, else `raw` itself). Written at the start of `into` when given (it must have room for
 * body + SEALED_CHUNK_OVERHEAD), else into a new buffer; returns the sealed chunk's bytes.
 */
export function sealChunk(
  keys: { keyId: string; chunkKey: Uint8Array },
  kid: Uint8Array,
  rawLength: number,
  body: Uint8Array,
  zstd: boolean,
  into?: Buffer,
): Buffer {
  const salt = randomBytes(16);
  const size = SEALED_CHUNK_OVERHEAD + body.length;
  const out = into ? into.subarray(0, size) : Buffer.allocUnsafe(size);
  writeSealedChunkHeader(out, { zstd, keyId: keys.keyId, rawLength, salt, keyedId: Buffer.from(kid) });
  const cipher = createCipheriv('aes-256-gcm', chunkCipherKey(keys.chunkKey, salt), ZERO_NONCE);
  cipher.setAAD(out.subarray(0, SEALED_CHUNK_HEADER_BYTES));
  let at = SEALED_CHUNK_HEADER_BYTES;
  at += updateInto(cipher, body, out, at);
  at += cipher.final().copy(out, at);
  cipher.getAuthTag().copy(out, at);
  return out;
}

/**
 * Opens sealed chunk `id` (manifest length `length`): checks its key id and that `id` is its keyed id's in
 * this key's domain, authenticates and decrypts it, and returns the body and whether it is a zstd frame.
 * The body is decrypted in place: it is a view into `sealed`, whose sealed bytes are gone (after a failure
 * `sealed` holds unauthenticated bytes). The caller decompresses and then must check `checkKeyedId` on the
 * raw bytes. Any failure names the chunk.
 */
export function openChunk(
  keys: { keyId: string; keyIdBytes?: Buffer; chunkKey: Uint8Array },
  id: string,
  length: number,
  sealed: Buffer,
): { body: Buffer; zstd: boolean; kid: Buffer } {
  const h = parseSealedChunk(sealed);
  if (typeof h === 'string') throw new CorruptError(`chunk ${id} is corrupt: ${h}`, { chunk: id });
  if (h.keyId !== keys.keyId)
    throw new CorruptError(`chunk ${id} is sealed with key ${h.keyId}, not with this key (${keys.keyId})`, {
      chunk: id,
    });
  if (h.rawLength !== length)
    throw new CorruptError(`chunk ${id}: sealed for ${h.rawLength} bytes, the manifest says ${length}`, {
      chunk: id,
    });
  const bound = domainChunkId(keys.keyIdBytes ?? Buffer.from(keys.keyId, 'hex'), h.keyedId).toString('hex');
  if (bound !== id)
    throw new HashMismatchError(`chunk ${id}: its keyed id belongs to chunk ${bound}`, { chunk: id });
  const end = sealed.length - SEALED_CHUNK_TAG_BYTES;
  const decipher = createDecipheriv('aes-256-gcm', chunkCipherKey(keys.chunkKey, h.salt), ZERO_NONCE);
  decipher.setAAD(sealed.subarray(0, SEALED_CHUNK_HEADER_BYTES));
  decipher.setAuthTag(sealed.subarray(end));
  // GCM's output is as long as its input: each piece's plaintext goes back over the ciphertext it came from.
  let at = SEALED_CHUNK_HEADER_BYTES;
  at += updateInto(decipher, sealed.subarray(at, end), sealed, at);
  try {
    at += decipher.final().copy(sealed, at);
  } catch {
    throw new CorruptError(
      `chunk ${id} is corrupt: its authentication tag does not match (changed in storage or in transit)`,
      {
        chunk: id,
      },
    );
  }
  const body = sealed.subarray(SEALED_CHUNK_HEADER_BYTES, at);
  return { body, zstd: h.zstd, kid: Buffer.from(h.keyedId) };
}

/** The last check of an opened chunk: HMAC(idKey, raw) must be its keyed id (else a key holder sealed wrong bytes). */
export function checkKeyedId(idKey: Uint8Array, id: string, kid: Buffer, raw: Uint8Array): void {
  if (!keyedId(idKey, raw).equals(kid))
    throw new HashMismatchError(`chunk ${id}: its content does not match its keyed id`, { chunk: id });
}

/** The repository id of a chunk: SHA-256 over the key id and its keyed id (repo-engine/sealed-chunk.ts). */
export function e2eChunkId(
  keys: { idKey: Uint8Array; keyIdBytes: Buffer },
  raw: Uint8Array,
): { id: Buffer; kid: Buffer } {
  const kid = keyedId(keys.idKey, raw);
  return { id: domainChunkId(keys.keyIdBytes, kid), kid };
}
