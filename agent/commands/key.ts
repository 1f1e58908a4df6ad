import { EXIT_OK, EXIT_USAGE, parseCommandLine, UsageError } from '../../common/cli.js';
import { deriveE2eKeys } from '../e2e/e2e-keys.js';
import { openKey, writeKeyFileAtomic } from '../e2e/key-store.js';
import { newPassphrase } from '../e2e/passphrase.js';
import { addSlot, createKeyFile, removeSlot } from '../key-file.js';

const USAGE = `usage: diskvault key create --out FILE
       diskvault key add FILE       add a passphrase (a slot) that opens the key
       diskvault key list FILE      the key's id and its passphrase slots
       diskvault key remove FILE SLOT
       diskvault key passwd FILE    replace the passphrase you open it with

An end-to-end key: backups made with --key FILE (or DISKVAULT_KEY) are encrypted by the agent, and the
server never sees their content or the key. Keep a copy of the key file and its passphrase somewhere safe:
without both, those backups cannot be restored by anyone.

The passphrase: --password-file FILE, DISKVAULT_PASSWORD_FILE, DISKVAULT_PASSWORD, or a prompt on a
terminal. A new passphrase (key create, add, passwd): --new-password-file FILE or DISKVAULT_NEW_PASSWORD,
or asked twice on a terminal; key create also takes the usual sources.

Options: --json prints the result as JSON.
`;

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseCommandLine(argv, KEY_OPTIONS);
  const [sub, ...rest] = positionals;
  if (values.help || sub === undefined) {
    process.stdout.write(USAGE);
    return values.help ? EXIT_OK : EXIT_USAGE;
  }
  const json = values.json === true;
  const say = (text: string, obj: unknown) =>
    process.stdout.write(json ? `${JSON.stringify(obj)}\n` : `${text}\n`);
  const src = { passwordFile: values['password-file'] };
  const onePath = () => {
    if (rest.length !== 1) throw new UsageError(`key ${sub} takes one key file`);
    return rest[0] as string;
  };
  switch (sub) {
    case 'create': {
      if (!values.out) throw new UsageError('key create needs --out FILE');
      if (rest.length) throw new UsageError('key create takes no other arguments');
      const passphrase = await newPassphrase(
        'passphrase for the new key',
        values['new-password-file'] ??
          values['password-file'] ??
          (process.env.DISKVAULT_PASSWORD_FILE || undefined),
        process.env.DISKVAULT_NEW_PASSWORD ? 'DISKVAULT_NEW_PASSWORD' : 'DISKVAULT_PASSWORD',
      );
      const { file, master } = await createKeyFile(passphrase);
      writeKeyFileAtomic(values.out, file, { exclusive: true });
      const keyId = deriveE2eKeys(master).keyId;
      say(
        `created key ${keyId} in ${values.out} (mode 0600). Keep a copy of it and its passphrase somewhere safe: without both, its backups cannot be restored.`,
        { keyId, file: values.out, slot: file.slots[0]?.id },
      );
      return EXIT_OK;
    }
    case 'list': {
      const path = onePath();
      const opened = await openKey(path, src);
      if (json) {
        say('', {
          keyId: opened.keys.keyId,
          file: path,
          slots: opened.file.slots.map((s) => ({
            id: s.id,
            created: s.created,
            kdf: { name: s.kdf.name, N: s.kdf.N, r: s.kdf.r, p: s.kdf.p },
            current: s.id === opened.slot.id,
          })),
        });
        return EXIT_OK;
      }
      const lines = [
        `key ${opened.keys.keyId} (${path})`,
        '  SLOT              CREATED                   KDF',
      ];
      for (const s of opened.file.slots)
        lines.push(
          `${s.id === opened.slot.id ? '*' : ' '} ${s.id}  ${s.created.padEnd(24)}  scrypt N=${s.kdf.N} r=${s.kdf.r} p=${s.kdf.p}`,
        );
      lines.push('(* the slot your passphrase opened)');
      say(lines.join('\n'), null);
      return EXIT_OK;
    }
    case 'add': {
      const path = onePath();
      const { file, slot } = await withNewSlot(path, src, values['new-password-file']);
      writeKeyFileAtomic(path, file);
      say(`added slot ${slot.id} to ${path}`, { file: path, slot: slot.id, slots: file.slots.length });
      return EXIT_OK;
    }
    case 'remove': {
      if (rest.length !== 2) throw new UsageError('key remove takes a key file and a slot id');
      const [path, slotId] = rest as [string, string];
      // Opening it proves the right to change the key before anything is written.
      const opened = await openKey(path, src);
      if (opened.slot.id === slotId)
        throw new UsageError(
          `slot ${slotId} is the one your passphrase opened; open the key with another passphrase to remove it, or use key passwd`,
        );
      const file = removeSlot(opened.file, slotId, path);
      writeKeyFileAtomic(path, file);
      say(`removed slot ${slotId} from ${path}`, { file: path, removed: slotId, slots: file.slots.length });
      return EXIT_OK;
    }
    case 'passwd': {
      const path = onePath();
      const { opened, file: added, slot } = await withNewSlot(path, src, values['new-password-file']);
      const file = removeSlot(added, opened.slot.id, path);
      writeKeyFileAtomic(path, file);
      say(`changed the passphrase of ${path}: slot ${opened.slot.id} replaced by ${slot.id}`, {
        file: path,
        removed: opened.slot.id,
        slot: slot.id,
      });
      return EXIT_OK;
    }
    default:
      throw new UsageError(`unknown key command '${sub}' (create, add, list, remove, passwd)`);
  }
}

/**
 * Opens the key file (proving the right to change it) and seals its master key under a new passphrase in a
 * new slot: the changed file, not yet written, and the slot the passphrase opened.
 */
async function withNewSlot(
  path: string,
  src: Parameters<typeof openKey>[1],
  newPasswordFile: string | undefined,
) {
  const opened = await openKey(path, src);
  const passphrase = await newPassphrase('new passphrase', newPasswordFile, 'DISKVAULT_NEW_PASSWORD');
  return { opened, ...(await addSlot(opened.file, opened.master, passphrase)) };
}

const KEY_OPTIONS = {
  out: { type: 'string' },
  'password-file': { type: 'string' },
  'new-password-file': { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;
