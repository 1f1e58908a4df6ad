import { createHash, randomBytes } from 'node:crypto';
import test from 'ava';
import { CorruptError, InvalidInputError } from '../../common/errors.js';
import {
  encodeEntry,
  encodeManifest,
  MANIFEST_ENTRY_BYTES,
  type ManifestHeader,
  ManifestReader,
  ManifestWriter,
} from '../../repo-engine/manifest-codec.js';

function header(entries: { id: string; length: number }[]): ManifestHeader {
  return {
    formatVersion: 1,
    host: 'web1',
    disk: 'sda',
    time: '2026-11-29T02:00:00.000Z',
    size: entries.reduce((s, e) => s + e.length, 0),
    sha256: createHash('sha256').update('image').digest('hex'),
    chunker: { min: 262144, avg: 1048576, max: 4194304 },
    tags: ['nightly'],
    unreadable: [[4096, 512]],
    sourceFormat: 'raw',
    chunkCount: entries.length,
  };
}

function entries(n: number) {
  return Array.from({ length: n }, (_, i) => ({ id: randomBytes(32).toString('hex'), length: 1000 + i }));
}

/** Feeds a buffer in uneven pieces, as a socket would. */
async function* pieces(buf: Buffer, size: number) {
  for (let at = 0; at < buf.length; at += size) yield buf.subarray(at, at + size);
}

async function readAll(buf: Buffer, source: 'wire' | 'storage', pieceSize = 7) {
  const reader = await ManifestReader.open(pieces(buf, pieceSize), source);
  const out = [];
  for await (const e of reader.entries()) out.push(e);
  return { header: reader.header, entries: out };
}

test('a manifest read back in odd-sized pieces gives the same header and entries', async (t) => {
  const list = entries(5000);
  const encoded = encodeManifest(header(list), list);
  t.is(
    encoded.length,
    12 + Buffer.byteLength(JSON.stringify(header(list))) + 5000 * MANIFEST_ENTRY_BYTES + 32,
  );
  const back = await readAll(encoded, 'wire', 4093);
  t.deepEqual(back.entries, list);
  t.is(back.header.host, 'web1');
  t.deepEqual(back.header.unreadable, [[4096, 512]]);
});

test('the streaming writer produces the same bytes as the one-shot encoder', async (t) => {
  const list = entries(100);
  const writer = new ManifestWriter(header(list));
  const body = Buffer.concat(list.map((e) => encodeEntry(e.id, e.length)));
  const streamed = Buffer.concat([writer.head(), writer.entries(body), writer.trailer()]);
  t.deepEqual(streamed, encodeManifest(header(list), list));
});

test('one flipped byte anywhere in a stored manifest is reported as corruption', async (t) => {
  const list = entries(50);
  const encoded = encodeManifest(header(list), list);
  for (const at of [3, 20, encoded.length - 40, encoded.length - 1]) {
    const bad = Buffer.from(encoded);
    bad[at] ^= 0x01;
    await t.throwsAsync(readAll(bad, 'storage'), { instanceOf: CorruptError }, `byte ${at}`);
  }
});

test('a truncated commit body or one with extra bytes is refused as invalid input', async (t) => {
  const list = entries(10);
  const encoded = encodeManifest(header(list), list);
  await t.throwsAsync(readAll(encoded.subarray(0, encoded.length - 50), 'wire'), {
    instanceOf: InvalidInputError,
  });
  await t.throwsAsync(readAll(Buffer.concat([encoded, Buffer.from('x')]), 'wire'), {
    instanceOf: InvalidInputError,
  });
});

test('a header with a traversal host name, a wrong size or a huge length is refused', async (t) => {
  const list = entries(3);
  const evil = encodeManifest({ ...header(list), host: '../etc' }, list);
  await t.throwsAsync(readAll(evil, 'wire'), { instanceOf: InvalidInputError, message: /host/ });
  const wrongSize = encodeManifest({ ...header(list), size: 1 }, list);
  await t.throwsAsync(readAll(wrongSize, 'wire'), { instanceOf: InvalidInputError, message: /add up/ });
  const huge = Buffer.from(encodeManifest(header(list), list));
  huge.writeUInt32BE(0xffffffff, 8);
  await t.throwsAsync(readAll(huge, 'wire'), { instanceOf: InvalidInputError, message: /header length/ });
});
