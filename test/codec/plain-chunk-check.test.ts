import { createHash } from 'node:crypto';
import test from 'ava';
import { compress } from 'zstd-napi';
import { checkedPlainChunk } from '../../agent/chunk-check.js';
import { isDiskvaultError } from '../../common/errors.js';

const raw = Buffer.from('the bytes of one chunk, '.repeat(100));
const id = createHash('sha256').update(raw).digest('hex');

test('a plain chunk checks out only with exactly its raw length and its id, raw or zstd', async (t) => {
  t.deepEqual(await checkedPlainChunk(id, 'raw', raw, raw.length), raw);
  t.deepEqual(await checkedPlainChunk(id, 'zstd', compress(raw), raw.length), raw);
  for (const [encoding, payload, length, code] of [
    ['raw', raw, raw.length + 1, 'Corrupt'],
    ['raw', raw.subarray(1), raw.length, 'Corrupt'],
    ['zstd', compress(raw), raw.length - 1, 'Corrupt'],
    ['raw', Buffer.from(raw).fill(0x41, 0, 1), raw.length, 'HashMismatch'],
  ] as const) {
    const err = await t.throwsAsync(checkedPlainChunk(id, encoding, payload, length, 'chunk from the test'));
    t.true(
      isDiskvaultError(err) && err.code === code,
      `${encoding} ${payload.length}/${length}: ${err?.message}`,
    );
    t.true(err?.message.startsWith('chunk from the test: '), err?.message);
  }
});
