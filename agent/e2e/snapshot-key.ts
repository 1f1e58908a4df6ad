import type { SnapshotInfo } from '../../api/protocol.js';
import { CorruptError, InvalidInputError } from '../../common/errors.js';
import type { ManifestHeader } from '../../repo-engine/manifest-codec.js';
import { type E2eKeys, type E2eWorkerKeys, openSecrets, sealSecrets, secretsContext } from './e2e-keys.js';
import { keyPathOf, openKey } from './key-store.js';

/** The flags every command that reads or writes end-to-end snapshots takes. */
export const KEY_OPTIONS = {
  key: { type: 'string' },
  'password-file': { type: 'string' },
} as const;

export interface KeyFlags {
  key?: string;
  'password-file'?: string;
}

/**
 * The key a command needs for `snapshot`, opened, or undefined for a plaintext snapshot. Everything that
 * can go wrong is found here, before any target is opened: no key given (the message names the key id the
 * snapshot needs), a wrong passphrase (names the key file), another key (names both key ids).
 */
export async function keyForSnapshot(
  snapshot: Pick<SnapshotInfo, 'id' | 'e2e'>,
  flags: KeyFlags,
): Promise<E2eKeys | undefined> {
  if (snapshot.e2e === undefined) return undefined;
  const path = keyPathOf(flags.key);
  if (path === undefined)
    throw new InvalidInputError(
      `snapshot ${snapshot.id} is encrypted end to end with key ${snapshot.e2e.keyId}: give its key file with --key FILE (or DISKVAULT_KEY)`,
      { snapshot: snapshot.id, keyId: snapshot.e2e.keyId },
    );
  const { keys } = await openKey(path, { passwordFile: flags['password-file'] });
  if (keys.keyId !== snapshot.e2e.keyId)
    throw new InvalidInputError(
      `snapshot ${snapshot.id} is encrypted with key ${snapshot.e2e.keyId}; the key file ${path} holds key ${keys.keyId}`,
      { snapshot: snapshot.id, keyId: snapshot.e2e.keyId },
    );
  return keys;
}

/** Whether the passphrase comes without a prompt (a file or the environment). */
export function passphraseGiven(flags: KeyFlags, env: NodeJS.ProcessEnv = process.env): boolean {
  return Boolean(flags['password-file'] || env.DISKVAULT_PASSWORD_FILE || env.DISKVAULT_PASSWORD);
}

/** An end-to-end manifest's header with its secrets opened (the image's SHA-256 in `sha256`). */
export function openedHeader<H extends ManifestHeader>(
  keys: E2eKeys | undefined,
  header: H,
  snapshot: string,
): H {
  if (keys === undefined) return header;
  if (header.e2e === undefined || header.e2e.keyId !== keys.keyId)
    throw new CorruptError(`snapshot ${snapshot}: its manifest is not sealed with key ${keys.keyId}`, {
      snapshot,
    });
  const secrets = openSecrets(keys, header.e2e.sealed, secretsContext(header), snapshot);
  return { ...header, sha256: secrets.sha256 };
}

/** The header an end-to-end backup commits: the image's SHA-256 sealed, `sha256` empty. */
export function sealedHeader(keys: E2eKeys | undefined, header: ManifestHeader): ManifestHeader {
  if (keys === undefined) return header;
  const sealed = sealSecrets(keys, { sha256: header.sha256 }, secretsContext(header));
  return { ...header, sha256: '', e2e: { keyId: keys.keyId, sealed } };
}

/** What worker threads need of a key (hashing, sealing, opening chunks). */
export function workerKeys(keys: E2eKeys): E2eWorkerKeys {
  return { keyId: keys.keyId, idKey: keys.idKey, chunkKey: keys.chunkKey };
}
