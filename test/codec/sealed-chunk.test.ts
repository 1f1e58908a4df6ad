import { randomBytes } from 'node:crypto';
import test from 'ava';
import { checkKeyedId, e2eChunkId, openChunk, sealChunk } from '../../agent/e2e/chunk-sealing.js';
import { deriveE2eKeys, keyedId } from '../../agent/e2e/e2e-keys.js';
import { keyIdOfProof, sealedChunkProblem } from '../../repo-engine/sealed-chunk.js';

const a = deriveE2eKeys(randomBytes(32));
const b = deriveE2eKeys(randomBytes(32));

test('keys: one master key gives the same key id every time, another master another; the key id is the hash of the proof', (t) => {
  const master = randomBytes(32);
  t.is(deriveE2eKeys(master).keyId, deriveE2eKeys(master).keyId);
  t.not(a.keyId, b.keyId);
  t.is(a.keyId, keyIdOfProof(a.proof));
  t.false(a.proof.equals(a.idKey) || a.idKey.equals(a.chunkKey) || a.chunkKey.equals(a.manifestKey));
});

test('a sealed chunk opens with its key to its bytes; each sealing differs; another key, a moved id or any flipped byte is refused and named', (t) => {
  const raw = randomBytes(50_000);
  const { id, kid } = e2eChunkId(a, raw);
  const hex = id.toString('hex');
  const one = sealChunk(a, kid, raw.length, raw, false);
  const two = sealChunk(a, kid, raw.length, raw, false);
  t.false(one.equals(two), 'a fresh salt per sealing');
  t.is(sealedChunkProblem(one, hex, 1 << 20, { keyId: a.keyId }), undefined);
  const opened = openChunk(a, hex, raw.length, one);
  t.true(opened.body.equals(raw));
  checkKeyedId(a.idKey, hex, opened.kid, opened.body);

  t.throws(() => openChunk(b, hex, raw.length, one), {
    message: new RegExp(`chunk ${hex} is sealed with key ${a.keyId}`),
  });
  const other = e2eChunkId(a, randomBytes(10)).id.toString('hex');
  t.throws(() => openChunk(a, other, raw.length, one), {
    message: new RegExp(`chunk ${other}: its keyed id belongs to chunk ${hex}`),
  });
  t.regex(sealedChunkProblem(one, other, 1 << 20) ?? '', /its id in key .* domain is/);
  for (const at of [4, 30, 100, one.length - 1]) {
    const flipped = Buffer.from(one);
    flipped[at] ^= 0x01;
    t.throws(
      () => openChunk(a, hex, raw.length, flipped),
      { message: new RegExp(`chunk ${hex}`) },
      `byte ${at}`,
    );
  }
});

test('a chunk sealed by a key holder with the wrong bytes passes the tag but not the keyed id', (t) => {
  const raw = randomBytes(4096);
  const { id, kid } = e2eChunkId(a, raw);
  const wrong = randomBytes(4096);
  const sealed = sealChunk(a, kid, wrong.length, wrong, false);
  const opened = openChunk(a, id.toString('hex'), wrong.length, sealed);
  t.throws(() => checkKeyedId(a.idKey, id.toString('hex'), opened.kid, opened.body), {
    message: new RegExp(`chunk ${id.toString('hex')}: its content does not match its keyed id`),
  });
  t.false(keyedId(a.idKey, raw).equals(keyedId(b.idKey, raw)), 'keyed ids differ per key');
});

test('the server refuses sealed chunks of the wrong size or flags without any key', (t) => {
  const raw = randomBytes(1000);
  const { id, kid } = e2eChunkId(a, raw);
  const hex = id.toString('hex');
  const sealed = sealChunk(a, kid, raw.length, raw, false);
  t.regex(sealedChunkProblem(sealed, hex, 999) ?? '', /claims 1000 raw bytes \(1 to 999 allowed\)/);
  t.regex(
    sealedChunkProblem(sealed.subarray(0, sealed.length - 1), hex, 1 << 20) ?? '',
    /holds 999 sealed bytes for 1000/,
  );
  const flags = Buffer.from(sealed);
  flags[4] = 0x80;
  t.regex(sealedChunkProblem(flags, hex, 1 << 20) ?? '', /unknown flags/);
  t.regex(sealedChunkProblem(sealed, hex, 1 << 20, { keyId: b.keyId }) ?? '', /the session's key is/);
});
