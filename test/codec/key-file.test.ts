import test from 'ava';
import {
  addSlot,
  createKeyFile,
  DEFAULT_SCRYPT,
  KeyFileError,
  openKeyFile,
  parseKeyFile,
  removeSlot,
} from '../../agent/key-file.js';

// Small scrypt parameters keep the test fast; the defaults are checked once below.
const FAST = { N: 1024, r: 8, p: 1 };

test('a key file opens with any of its passphrases to the same master key, and with no other', async (t) => {
  const { file, master } = await createKeyFile('first passphrase', { params: FAST });
  const text = JSON.stringify(file);
  const parsed = parseKeyFile(text, 'k.json');
  t.deepEqual((await openKeyFile(parsed, 'first passphrase', 'k.json')).master, master);
  const { file: two, slot } = await addSlot(parsed, master, 'second passphrase', { params: FAST });
  t.is(two.slots.length, 2);
  t.deepEqual((await openKeyFile(two, 'second passphrase', 'k.json')).master, master);
  t.is((await openKeyFile(two, 'second passphrase', 'k.json')).slot.id, slot.id);
  const wrong = await t.throwsAsync(openKeyFile(two, 'not it', 'k.json'), { instanceOf: KeyFileError });
  t.is(wrong?.message, 'wrong passphrase for the key file k.json');
  t.false(text.includes(master.toString('hex')));
  t.false(text.includes(master.toString('base64')));

  const first = two.slots[0]?.id as string;
  const one = removeSlot(two, first, 'k.json');
  await t.throwsAsync(openKeyFile(one, 'first passphrase', 'k.json'), { instanceOf: KeyFileError });
  t.deepEqual((await openKeyFile(one, 'second passphrase', 'k.json')).master, master);
  t.throws(() => removeSlot(one, slot.id, 'k.json'), { message: /last passphrase/ });
});

test('a changed slot, another key id, or a file that is not a key file are refused by name', async (t) => {
  const { file } = await createKeyFile('pass', { params: FAST });
  const slot = file.slots[0];
  if (!slot) throw new Error('no slot');
  const sealed = Buffer.from(slot.sealed, 'base64');
  sealed[3] ^= 1;
  const changed = { ...file, slots: [{ ...slot, sealed: sealed.toString('base64') }] };
  await t.throwsAsync(openKeyFile(changed, 'pass', 'k'), { message: 'wrong passphrase for the key file k' });
  const moved = { ...file, keyId: '0'.repeat(32) };
  await t.throwsAsync(openKeyFile(moved, 'pass', 'k'), { instanceOf: KeyFileError });
  t.throws(() => parseKeyFile('{}', 'x.json'), { message: 'x.json is not a diskvault key file' });
  t.throws(() => parseKeyFile('nope', 'x.json'), {
    message: 'x.json is not a diskvault key file (not JSON)',
  });
  await t.throwsAsync(createKeyFile('', { params: FAST }), { message: /empty passphrase/ });
  // scrypt parameters changed in the file (N = 1, a salt of another length): refused by name, before scrypt.
  for (const kdf of [
    { ...slot.kdf, N: 1 },
    { ...slot.kdf, salt: Buffer.alloc(8).toString('base64') },
  ]) {
    const text = JSON.stringify({ ...file, slots: [{ ...slot, kdf }] });
    t.throws(() => parseKeyFile(text, 'k.json'), {
      instanceOf: KeyFileError,
      message: 'k.json has a malformed passphrase slot',
    });
  }
});

test('the default scrypt parameters are stored with each slot and open again', async (t) => {
  const { file, master } = await createKeyFile('pass');
  t.like(file.slots[0]?.kdf, { name: 'scrypt', ...DEFAULT_SCRYPT });
  t.deepEqual((await openKeyFile(parseKeyFile(JSON.stringify(file), 'k'), 'pass', 'k')).master, master);
});
