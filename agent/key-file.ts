import {
  createCipheriv,
  createDecipheriv,
  randomBytes,
  type ScryptOptions,
  scrypt as scryptCallback,
} from 'node:crypto';

/**
 * An end-to-end key file: a random 32-byte master key, wrapped once per passphrase (a "slot"), as restic
 * keeps one key file per password and LUKS one keyslot per passphrase. Each slot derives a wrapping key
 * from its passphrase with scrypt (memory-hard) and seals the master key with AES-256-GCM; any slot opens
 * the key, and slots can be added and removed without changing the master key (so without touching any
 * backup made with it).
 *
 * File (JSON):
 *   { "format": "diskvault-key", "version": 1, "keyId": "<32 hex, random>", "created": "<ISO>",
 *     "slots": [ { "id": "<16 hex>", "created": "<ISO>",
 *                  "kdf": { "name": "scrypt", "N": 32768, "r": 8, "p": 1, "salt": "<base64, 32 bytes>" },
 *                  "nonce": "<base64, 12 bytes>", "sealed": "<base64: 32-byte master key || 16-byte tag>" } ] }
 *
 *   wrapping key = scrypt(passphrase UTF-8, salt, N, r, p, 32 bytes)
 *   sealed       = AES-256-GCM(wrapping key, nonce, master key), AAD "diskvault key slot v1 " || keyId
 *
 * scrypt N = 2^15, r = 8, p = 1 costs 32 MiB and about 0.1 s per try on a current core (the parameters
 * OWASP lists for scrypt), stored per slot so later slots can be made harder without breaking old ones.
 */
export const KEY_FILE_FORMAT = 'diskvault-key';
export const KEY_FILE_VERSION = 1;
export const DEFAULT_SCRYPT = { N: 32768, r: 8, p: 1 } as const;
const MASTER_BYTES = 32;
const TAG_BYTES = 16;

export interface KeySlot {
  id: string;
  created: string;
  kdf: { name: 'scrypt'; N: number; r: number; p: number; salt: string };
  nonce: string;
  sealed: string;
}

export interface KeyFile {
  format: typeof KEY_FILE_FORMAT;
  version: typeof KEY_FILE_VERSION;
  keyId: string;
  created: string;
  slots: KeySlot[];
}

/** A key file that is not one, or a passphrase that opens none of its slots. */
export class KeyFileError extends Error {}

function scrypt(passphrase: string, salt: Buffer, kdf: KeySlot['kdf']): Promise<Buffer> {
  const opts: ScryptOptions = { N: kdf.N, r: kdf.r, p: kdf.p, maxmem: 256 * kdf.N * kdf.r + 1024 * 1024 };
  return new Promise((resolve, reject) =>
    scryptCallback(Buffer.from(passphrase, 'utf8'), salt, 32, opts, (err, key) =>
      err ? reject(err) : resolve(key),
    ),
  );
}

function slotAad(keyId: string): Buffer {
  return Buffer.from(`diskvault key slot v1 ${keyId}`, 'utf8');
}

async function makeSlot(
  keyId: string,
  master: Buffer,
  passphrase: string,
  params: { N: number; r: number; p: number },
  now: Date,
): Promise<KeySlot> {
  if (passphrase.length === 0) throw new KeyFileError('an empty passphrase is not accepted');
  const kdf = { name: 'scrypt' as const, ...params, salt: randomBytes(32).toString('base64') };
  const wrapping = await scrypt(passphrase, Buffer.from(kdf.salt, 'base64'), kdf);
  const nonce = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', wrapping, nonce);
  cipher.setAAD(slotAad(keyId));
  const sealed = Buffer.concat([cipher.update(master), cipher.final(), cipher.getAuthTag()]);
  return {
    id: randomBytes(8).toString('hex'),
    created: now.toISOString(),
    kdf,
    nonce: nonce.toString('base64'),
    sealed: sealed.toString('base64'),
  };
}

/** A new key file with one slot for `passphrase`. */
export async function createKeyFile(
  passphrase: string,
  opts: { params?: { N: number; r: number; p: number }; now?: Date } = {},
): Promise<{ file: KeyFile; master: Buffer }> {
  const now = opts.now ?? new Date();
  const master = randomBytes(MASTER_BYTES);
  const keyId = randomBytes(16).toString('hex');
  const slot = await makeSlot(keyId, master, passphrase, opts.params ?? DEFAULT_SCRYPT, now);
  return {
    file: {
      format: KEY_FILE_FORMAT,
      version: KEY_FILE_VERSION,
      keyId,
      created: now.toISOString(),
      slots: [slot],
    },
    master,
  };
}

/** Parses and checks a key file's JSON; KeyFileError naming `where` when it is not a key file. */
export function parseKeyFile(text: string, where: string): KeyFile {
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(text) as Record<string, unknown>;
  } catch {
    throw new KeyFileError(`${where} is not a diskvault key file (not JSON)`);
  }
  if (o?.format !== KEY_FILE_FORMAT) throw new KeyFileError(`${where} is not a diskvault key file`);
  if (o.version !== KEY_FILE_VERSION)
    throw new KeyFileError(
      `${where} is key file version ${String(o.version)}; this build reads ${KEY_FILE_VERSION}`,
    );
  if (typeof o.keyId !== 'string' || !/^[0-9a-f]{32}$/.test(o.keyId))
    throw new KeyFileError(`${where} has no valid key id`);
  if (!Array.isArray(o.slots) || o.slots.length === 0)
    throw new KeyFileError(`${where} has no passphrase slots`);
  for (const s of o.slots as KeySlot[]) {
    const k = s?.kdf;
    const ok =
      typeof s?.id === 'string' &&
      /^[0-9a-f]{16}$/.test(s.id) &&
      k?.name === 'scrypt' &&
      [k.N, k.r, k.p].every((v) => Number.isSafeInteger(v) && v > 0) &&
      // scrypt's N is a power of two above 1 (node throws a bare RangeError for N = 1).
      k.N > 1 &&
      (k.N & (k.N - 1)) === 0 &&
      k.N <= 2 ** 20 &&
      k.r <= 32 &&
      k.p <= 16 &&
      typeof k.salt === 'string' &&
      Buffer.from(k.salt, 'base64').length === 32 &&
      typeof s.nonce === 'string' &&
      Buffer.from(s.nonce, 'base64').length === 12 &&
      typeof s.sealed === 'string' &&
      Buffer.from(s.sealed, 'base64').length === MASTER_BYTES + TAG_BYTES;
    if (!ok) throw new KeyFileError(`${where} has a malformed passphrase slot`);
  }
  return o as unknown as KeyFile;
}

/**
 * The master key and the slot `passphrase` opens. Every slot is tried; KeyFileError "wrong passphrase"
 * when none opens (GCM's tag tells a wrong passphrase from a right one).
 */
export async function openKeyFile(
  file: KeyFile,
  passphrase: string,
  where: string,
): Promise<{ master: Buffer; slot: KeySlot }> {
  for (const slot of file.slots) {
    const wrapping = await scrypt(passphrase, Buffer.from(slot.kdf.salt, 'base64'), slot.kdf);
    const sealed = Buffer.from(slot.sealed, 'base64');
    const decipher = createDecipheriv('aes-256-gcm', wrapping, Buffer.from(slot.nonce, 'base64'));
    decipher.setAAD(slotAad(file.keyId));
    decipher.setAuthTag(sealed.subarray(MASTER_BYTES));
    const master = decipher.update(sealed.subarray(0, MASTER_BYTES));
    try {
      decipher.final();
      return { master, slot };
    } catch {
      // Not this slot's passphrase: try the next.
    }
  }
  throw new KeyFileError(`wrong passphrase for the key file ${where}`);
}

/** `file` with one more slot, for `newPassphrase`; the caller has opened it (`master`). */
export async function addSlot(
  file: KeyFile,
  master: Buffer,
  newPassphrase: string,
  opts: { params?: { N: number; r: number; p: number }; now?: Date } = {},
): Promise<{ file: KeyFile; slot: KeySlot }> {
  const slot = await makeSlot(
    file.keyId,
    master,
    newPassphrase,
    opts.params ?? DEFAULT_SCRYPT,
    opts.now ?? new Date(),
  );
  return { file: { ...file, slots: [...file.slots, slot] }, slot };
}

/** `file` without slot `id`; the last slot is never removed (the key could then never be opened again). */
export function removeSlot(file: KeyFile, id: string, where: string): KeyFile {
  if (!file.slots.some((s) => s.id === id)) throw new KeyFileError(`${where} has no passphrase slot ${id}`);
  if (file.slots.length === 1)
    throw new KeyFileError(`slot ${id} is the last passphrase of ${where}; add another before removing it`);
  return { ...file, slots: file.slots.filter((s) => s.id !== id) };
}
