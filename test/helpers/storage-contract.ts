import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import test, { type ExecutionContext } from 'ava';
import { InvalidInputError, NotFoundError } from '../../common/errors.js';
import type { StorageAdapter } from '../../storage-adapters/adapter.js';

/**
 * Everything a StorageAdapter promises, as one suite every adapter runs unchanged (test/storage/*.test.ts).
 * An adapter is correct when this passes; adapter-specific extras live in that adapter's own test file.
 */
export interface AdapterUnderTest {
  adapter: StorageAdapter;
  cleanup(): Promise<void>;
}

export interface ContractCapabilities {
  /** Size of the "large object" cases; 64 MiB unless an adapter's test server cannot take it. */
  largeObjectBytes?: number;
}

const MiB = 1024 * 1024;

export function storageContract(
  name: string,
  makeAdapter: () => Promise<AdapterUnderTest>,
  caps: ContractCapabilities = {},
): void {
  const largeBytes = caps.largeObjectBytes ?? 64 * MiB;

  /** Each test gets a fresh, empty adapter and always releases it. */
  const withAdapter = (title: string, body: (t: ExecutionContext, s: StorageAdapter) => Promise<void>) => {
    test(`${name}: ${title}`, async (t) => {
      const { adapter, cleanup } = await makeAdapter();
      try {
        await body(t, adapter);
      } finally {
        await adapter.close();
        await cleanup();
      }
    });
  };

  withAdapter('an empty object round-trips from bytes and from a stream', async (t, s) => {
    await s.put('empty/bytes', new Uint8Array(0));
    await s.put('empty/stream', Readable.from([]));
    for (const key of ['empty/bytes', 'empty/stream']) {
      t.is((await s.getBytes(key)).length, 0);
      t.is((await readStream(await s.get(key))).length, 0);
      t.is((await s.stat(key))?.size, 0);
    }
  });

  withAdapter(
    'once put has resolved, the caller may reuse its buffer: the object keeps its bytes',
    async (t, s) => {
      // The engine writes chunk objects from recycled buffers and refills them for the next object.
      const buf = randomBytes(256 * 1024);
      const expected = Buffer.from(buf);
      await s.put('reuse/a', buf);
      buf.fill(0xa5);
      await s.put('reuse/b', buf);
      t.deepEqual(await s.getBytes('reuse/a'), expected);
      t.deepEqual(await readStream(await s.get('reuse/a')), expected);
    },
  );

  withAdapter('getBytes reads into the buffer its allocator returns, whole and in a range', async (t, s) => {
    // The engine passes recycled buffers: a restore's reads then allocate nothing.
    const value = randomBytes(300 * 1024);
    await s.put('alloc/key', value);
    for (const [range, expected] of [
      [undefined, value],
      [{ start: 1000, end: 199_999 }, value.subarray(1000, 200_000)],
    ] as const) {
      const asked: number[] = [];
      let given: Buffer | undefined;
      const got = await s.getBytes('alloc/key', range, (length) => {
        asked.push(length);
        given = Buffer.alloc(length, 0xee);
        return given;
      });
      t.deepEqual(got, expected);
      t.deepEqual(asked, [expected.length], 'asked once, for exactly the length read');
      t.true(got.buffer === given?.buffer, 'the bytes lie in the allocated buffer');
    }
  });

  withAdapter('a small object round-trips from bytes and from a stream', async (t, s) => {
    const value = Buffer.from('diskvault small object \u00e9\n');
    await s.put('small/bytes', value);
    await s.put('small/stream', Readable.from([value.subarray(0, 5), value.subarray(5)]));
    for (const key of ['small/bytes', 'small/stream']) {
      t.deepEqual(await s.getBytes(key), value);
      t.deepEqual(await readStream(await s.get(key)), value);
    }
  });

  withAdapter(`a ${largeBytes / MiB} MiB object round-trips from bytes and from a stream`, async (t, s) => {
    const value = randomBytes(largeBytes);
    const expected = sha256(value);
    await s.put('large/bytes', value);
    await s.put('large/stream', Readable.from(slices(value, MiB)));
    for (const key of ['large/bytes', 'large/stream']) {
      t.is((await s.stat(key))?.size, largeBytes);
      t.is(await streamSha256(await s.get(key)), expected, key);
    }
    const tail = await s.getBytes('large/stream', { start: largeBytes - 10 });
    t.deepEqual(tail, value.subarray(largeBytes - 10));
  });

  withAdapter('stat reports the size and a current modification time', async (t, s) => {
    const before = Date.now();
    await s.put('stat/one', Buffer.alloc(1234, 7));
    const info = await s.stat('stat/one');
    t.is(info?.size, 1234);
    // Whole-second server clocks (S3) round down; allow that and a little skew, never a bogus zero.
    t.true(info !== undefined && info.mtimeMs > before - 5000 && info.mtimeMs < Date.now() + 5000);
  });

  withAdapter('an overwrite replaces the whole value, longer or shorter', async (t, s) => {
    await s.put('over/key', Buffer.from('first value'));
    await s.put('over/key', Buffer.from('a considerably longer second value'));
    t.is((await s.getBytes('over/key')).toString(), 'a considerably longer second value');
    await s.put('over/key', Readable.from([Buffer.from('short')]));
    t.is((await s.getBytes('over/key')).toString(), 'short');
    t.is((await s.stat('over/key'))?.size, 5);
  });

  withAdapter(
    'a missing key is NotFound for reads, absent for stat, and deleting it succeeds',
    async (t, s) => {
      await s.put('present/x', Buffer.from('x'));
      for (const key of ['missing', 'present/y', 'present/x/below']) {
        await t.throwsAsync(() => s.get(key), { instanceOf: NotFoundError }, key);
        await t.throwsAsync(() => s.getBytes(key), { instanceOf: NotFoundError }, key);
        await t.throwsAsync(() => s.getBytes(key, { start: 0, end: 0 }), { instanceOf: NotFoundError }, key);
        t.is(await s.stat(key), undefined, key);
        await t.notThrowsAsync(() => s.delete(key), key);
      }
      await t.notThrowsAsync(() => s.deleteMany(['missing', 'present/y']));
      t.deepEqual(await s.getBytes('present/x'), Buffer.from('x'));
    },
  );

  withAdapter('delete removes a key and a second delete still succeeds', async (t, s) => {
    await s.put('del/one', Buffer.from('1'));
    await s.put('del/two', Buffer.from('2'));
    await s.delete('del/one');
    await s.delete('del/one');
    t.is(await s.stat('del/one'), undefined);
    t.deepEqual(await keysOf(s, 'del/'), ['del/two']);
  });

  withAdapter('byte ranges follow HTTP semantics', async (t, s) => {
    const value = Buffer.from('0123456789abcdef');
    await s.put('range/key', value);
    t.is((await s.getBytes('range/key', { start: 0, end: 0 })).toString(), '0');
    t.is((await s.getBytes('range/key', { start: 3, end: 7 })).toString(), '34567');
    t.is((await s.getBytes('range/key', { start: 10 })).toString(), 'abcdef');
    t.is((await s.getBytes('range/key', { start: 15, end: 15 })).toString(), 'f');
    t.is(
      (await s.getBytes('range/key', { start: 12, end: 1000 })).toString(),
      'cdef',
      'an end past the object is cut',
    );
    t.is((await readStream(await s.get('range/key', { start: 1, end: 2 }))).toString(), '12');
    await t.throwsAsync(() => s.getBytes('range/key', { start: 16 }), { instanceOf: InvalidInputError });
    await t.throwsAsync(() => s.getBytes('range/key', { start: 5, end: 4 }), {
      instanceOf: InvalidInputError,
    });
    await t.throwsAsync(() => s.getBytes('range/key', { start: -1 }), { instanceOf: InvalidInputError });
  });

  withAdapter(
    'listing over more than 1,000 keys crosses pages, in byte order, and deleteMany empties it',
    async (t, s) => {
      const keys = Array.from(
        { length: 1100 },
        (_, i) => `many/${(i * 7919) % 1100}-${i % 3 === 0 ? 'x' : 'y/z'}`,
      );
      await forEachLimited(keys, 32, (key) => s.put(key, Buffer.from(key)));
      await s.put('other/key', Buffer.from('not in the listing'));
      const listed: string[] = [];
      for await (const entry of s.list('many/')) {
        listed.push(entry.key);
        if (entry.size !== Buffer.byteLength(entry.key)) t.fail(`wrong size for ${entry.key}: ${entry.size}`);
      }
      t.deepEqual(listed, [...keys].sort(byteOrder));
      await s.deleteMany(keys);
      t.deepEqual(await keysOf(s, 'many/'), []);
      t.deepEqual(await keysOf(s, ''), ['other/key']);
    },
  );

  withAdapter('a prefix is a plain string prefix, so keys sharing a stem are told apart', async (t, s) => {
    const keys = ['stem/a/b/1', 'stem/a/bc', 'stem/a/b-c', 'stem/a/b.d', 'stem/ab', 'stem/a0'];
    for (const key of keys) await s.put(key, Buffer.from(key));
    t.deepEqual(await keysOf(s, 'stem/a/b'), ['stem/a/b-c', 'stem/a/b.d', 'stem/a/b/1', 'stem/a/bc']);
    t.deepEqual(await keysOf(s, 'stem/a/b/'), ['stem/a/b/1']);
    t.deepEqual(await keysOf(s, 'stem/a/bc'), ['stem/a/bc']);
    t.deepEqual(await keysOf(s, 'stem/a'), [
      'stem/a/b-c',
      'stem/a/b.d',
      'stem/a/b/1',
      'stem/a/bc',
      'stem/a0',
      'stem/ab',
    ]);
    t.deepEqual(await keysOf(s, ''), [...keys].sort(byteOrder));
    t.deepEqual(await keysOf(s, 'stem/zz'), []);
    t.deepEqual(await keysOf(s, 'nothing/here/'), []);
  });

  withAdapter('concurrent puts of one key leave exactly one of the whole values', async (t, s) => {
    const values = Array.from({ length: 8 }, (_, i) => Buffer.alloc(256 * 1024 + i * 4099, i + 1));
    await Promise.all(
      values.map((value, i) => s.put('race/key', i % 2 === 0 ? value : Readable.from(slices(value, 65536)))),
    );
    const result = await s.getBytes('race/key');
    t.true(
      values.some((value) => value.equals(result)),
      `got ${result.length} bytes that match none of the values`,
    );
    t.deepEqual(await keysOf(s, 'race/'), ['race/key']);
  });

  withAdapter('every allowed key character and the longest key are stored and listed', async (t, s) => {
    const long = `long/${Array.from({ length: 5 }, (_, i) => String.fromCharCode(97 + i).repeat(200)).join('/')}`;
    const longest = `${long}/${'z'.repeat(1024 - long.length - 1)}`;
    t.is(longest.length, 1024);
    const keys = [
      'chars/ABCDEFGHIJKLMNOPQRSTUVWXYZ',
      'chars/abcdefghijklmnopqrstuvwxyz',
      'chars/0123456789',
      'chars/._-',
      'chars/...',
      'chars/-lead/_under/.dot/trail.',
      longest,
    ];
    for (const key of keys) await s.put(key, Buffer.from(key));
    for (const key of keys) t.is((await s.getBytes(key)).toString(), key);
    t.deepEqual(await keysOf(s, ''), [...keys].sort(byteOrder));
    await s.deleteMany(keys);
    t.deepEqual(await keysOf(s, ''), []);
  });

  withAdapter('invalid keys throw InvalidInputError from every operation and touch nothing', async (t, s) => {
    const bad = [
      '',
      '..',
      '.',
      '../escape',
      'a/../../escape',
      'a/./b',
      '/absolute',
      'a//b',
      'trailing/',
      'nul\0byte',
      'back\\slash',
      'sp ace',
      'caf\u00e9',
      'x'.repeat(1025),
    ];
    for (const key of bad) {
      const label = JSON.stringify(key.slice(0, 40));
      await t.throwsAsync(() => s.put(key, Buffer.from('no')), { instanceOf: InvalidInputError }, label);
      await t.throwsAsync(
        () => s.put(key, Readable.from([Buffer.from('no')])),
        { instanceOf: InvalidInputError },
        label,
      );
      await t.throwsAsync(() => s.get(key), { instanceOf: InvalidInputError }, label);
      await t.throwsAsync(() => s.getBytes(key), { instanceOf: InvalidInputError }, label);
      await t.throwsAsync(() => s.stat(key), { instanceOf: InvalidInputError }, label);
      await t.throwsAsync(() => s.delete(key), { instanceOf: InvalidInputError }, label);
      await t.throwsAsync(() => s.deleteMany(['fine', key]), { instanceOf: InvalidInputError }, label);
    }
    await t.throwsAsync(() => keysOf(s, '../'), { instanceOf: InvalidInputError });
    await t.throwsAsync(() => keysOf(s, 'a\\b'), { instanceOf: InvalidInputError });
    t.deepEqual(await keysOf(s, ''), []);
  });

  withAdapter('a source stream that fails rejects the put and leaves nothing visible', async (t, s) => {
    await s.put('broken/existing', Buffer.from('old value'));
    const cases: [string, () => Readable][] = [
      ['destroyed with an error', () => failingStream(3 * MiB, new Error('source disk read failed'))],
      ['destroyed without an error', () => failingStream(3 * MiB)],
      ['destroyed after more than one part', () => failingStream(12 * MiB, new Error('late failure'))],
    ];
    for (const [label, make] of cases) {
      await t.throwsAsync(() => s.put('broken/new', make()), undefined, label);
      await t.throwsAsync(() => s.put('broken/existing', make()), undefined, label);
      t.is(await s.stat('broken/new'), undefined, label);
      t.is((await s.getBytes('broken/existing')).toString(), 'old value', label);
    }
    t.deepEqual(await keysOf(s, ''), ['broken/existing']);
  });
}

/** Yields `total` bytes in 1 MiB pieces, then fails (after the consumer has had some of them). */
export function failingStream(total: number, error?: Error): Readable {
  let sent = 0;
  const stream = new Readable({
    read() {
      if (sent >= total) {
        // Give the consumer a turn to write what it has before the failure arrives.
        setImmediate(() => stream.destroy(error));
        return;
      }
      sent += MiB;
      this.push(Buffer.alloc(MiB, 0x5a));
    },
  });
  return stream;
}

export async function keysOf(s: StorageAdapter, prefix: string): Promise<string[]> {
  const keys: string[] = [];
  for await (const entry of s.list(prefix)) keys.push(entry.key);
  return keys;
}

export async function readStream(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const part of stream) parts.push(part as Buffer);
  return Buffer.concat(parts);
}

function byteOrder(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

async function streamSha256(stream: Readable): Promise<string> {
  const hash = createHash('sha256');
  for await (const part of stream) hash.update(part as Buffer);
  return hash.digest('hex');
}

function* slices(bytes: Buffer, size: number): Generator<Buffer> {
  for (let offset = 0; offset < bytes.length; offset += size) yield bytes.subarray(offset, offset + size);
}

async function forEachLimited<T>(items: T[], limit: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await work(items[next++]);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}
