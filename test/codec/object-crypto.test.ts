import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import test from 'ava';
import { ObjectSealer, SealedObjectError } from '../../repo-engine/object-crypto.js';

const sealer = new ObjectSealer(randomBytes(32));

async function collect(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const p of stream) parts.push(p as Buffer);
  return Buffer.concat(parts);
}

async function sealStreamed(key: string, data: Buffer, segment: number, piece: number): Promise<Buffer> {
  const pieces = Array.from({ length: Math.ceil(data.length / piece) }, (_, i) =>
    data.subarray(i * piece, (i + 1) * piece),
  );
  return collect(Readable.from(pieces).pipe(sealer.sealStream(key, segment)));
}

test('sealed objects open whole and as streams, for any segment size and piece size, empty included', async (t) => {
  for (const size of [0, 1, 999, 1000, 1001, 5000]) {
    const data = randomBytes(size);
    t.deepEqual(sealer.open('k', sealer.seal('k', [data])), data);
    for (const segment of [1000, 4096]) {
      const sealed = await sealStreamed('k', data, segment, 333);
      t.deepEqual(sealer.open('k', sealed), data, `size ${size} segment ${segment}`);
      const pieces = Array.from({ length: Math.ceil(sealed.length / 77) }, (_, i) =>
        sealed.subarray(i * 77, (i + 1) * 77),
      );
      t.deepEqual(await collect(Readable.from(pieces).pipe(sealer.openStream('k'))), data);
      // In place: the same plaintext, lying in the sealed object's own memory.
      const inPlace = sealer.openInPlace('k', Buffer.from(sealed));
      t.deepEqual(inPlace, data, `in place, size ${size} segment ${segment}`);
    }
    const whole = sealer.seal('k', [data]);
    const opened = sealer.openInPlace('k', whole);
    t.deepEqual(opened, data);
    t.is(opened.buffer, whole.buffer, 'opened in the memory it was read into');
  }
  // Larger than one decryption piece, so pieces are written back over bytes already read.
  const large = randomBytes(300_000);
  t.deepEqual(sealer.openInPlace('k', await sealStreamed('k', large, 70_000, 4096)), large);
  t.deepEqual(sealer.openInPlace('k', sealer.seal('k', [large])), large);
});

test('a changed byte, another name, a dropped or swapped segment, a cut or appended tail all fail to open', async (t) => {
  const data = randomBytes(3500);
  const sealed = await sealStreamed('snapshots/a', data, 1000, 512);
  const step = 1016;
  const body = sealed.subarray(24);
  // XOR, not a fixed value: random bytes already hold any fixed value one time in 256.
  const changed = Buffer.from(sealed);
  changed[2000] ^= 0x55;
  const variants: [string, Buffer, string][] = [
    ['changed byte', changed, 'snapshots/a'],
    ['another name', sealed, 'snapshots/b'],
    ['dropped segment', Buffer.concat([sealed.subarray(0, 24), body.subarray(step)]), 'snapshots/a'],
    [
      'swapped segments',
      Buffer.concat([
        sealed.subarray(0, 24),
        body.subarray(step, 2 * step),
        body.subarray(0, step),
        body.subarray(2 * step),
      ]),
      'snapshots/a',
    ],
    ['cut at a segment border', sealed.subarray(0, 24 + 3 * step), 'snapshots/a'],
    ['appended bytes', Buffer.concat([sealed, randomBytes(20)]), 'snapshots/a'],
    ['another key', new ObjectSealer(randomBytes(32)).seal('snapshots/a', [data]), 'snapshots/a'],
  ];
  for (const [what, bytes, key] of variants) {
    t.throws(() => sealer.open(key, bytes), { instanceOf: SealedObjectError }, what);
    t.throws(() => sealer.openInPlace(key, Buffer.from(bytes)), { instanceOf: SealedObjectError }, what);
    await t.throwsAsync(collect(Readable.from([bytes]).pipe(sealer.openStream(key))), undefined, what);
  }
});
