import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough, Writable } from 'node:stream';
import test from 'ava';
import { restoreSnapshot } from '../../agent/restore/restore.js';
import { openRestoreTarget, streamTarget } from '../../agent/restore/restore-target.js';
import { DiskvaultError } from '../../common/errors.js';
import {
  buildImage,
  CHUNKER,
  imageFromChunks,
  MemoryFetcher,
  openManifest,
  sha256,
  type TestImage,
  withTempDir,
} from './fixtures.js';

const MiB = 1024 * 1024;

/** ~6 MiB: data, long zero runs cut at the chunker's max (as FastCDC cuts zeros), a short zero tail. */
function sampleImage(): TestImage {
  return buildImage([
    { kind: 'random', length: 100_000 },
    { kind: 'text', length: 200_000 },
    ...Array.from({ length: 12 }, () => ({ kind: 'zero' as const, length: CHUNKER.max })),
    { kind: 'random', length: 150_000 },
    ...Array.from({ length: 8 }, (_, i) => ({ kind: 'random' as const, length: 30_000 + i * 7_001 })),
    ...Array.from({ length: 8 }, () => ({ kind: 'zero' as const, length: CHUNKER.max })),
    { kind: 'random', length: 250_000 },
    { kind: 'zero', length: 70_000 },
    { kind: 'zero', length: 70_000 },
  ]);
}

async function restoreTo(
  img: TestImage,
  fetcher: MemoryFetcher,
  path: string,
  opts: { sparse?: boolean; inPlace?: boolean; continueOnError?: boolean; concurrency?: number } = {},
) {
  const reader = await openManifest(img);
  const target = await openRestoreTarget(path, {
    size: img.header.size,
    sparse: opts.sparse ?? true,
    inPlace: opts.inPlace ?? false,
  });
  try {
    return await restoreSnapshot({
      header: reader.header,
      entryBatches: reader.entryBatches(7),
      fetcher,
      target,
      inPlace: opts.inPlace,
      continueOnError: opts.continueOnError,
      concurrency: opts.concurrency ?? 4,
    });
  } finally {
    await target.close();
  }
}

test('restore to a new file is bit-exact, verified, and leaves zero chunks as holes', async (t) => {
  await withTempDir(async (dir) => {
    const img = sampleImage();
    const fetcher = new MemoryFetcher([img]);
    const path = join(dir, 'out.img');
    const res = await restoreTo(img, fetcher, path);
    t.true((await readFile(path)).equals(img.image));
    t.true(res.verified);
    t.is(res.sha256, img.header.sha256);
    const st = await stat(path);
    t.is(st.size, img.header.size);
    // 20 max-size zero chunks (5 MiB) must not be allocated.
    t.true(st.blocks * 512 <= img.header.size - 4 * MiB, `allocated ${st.blocks * 512} of ${st.size}`);
    t.is(res.bytesWritten + 20 * CHUNKER.max + 140_000, img.header.size);
  });
});

test('zero chunks of the chunker maximum are never downloaded, other zero chunks once', async (t) => {
  await withTempDir(async (dir) => {
    const img = sampleImage();
    const fetcher = new MemoryFetcher([img]);
    const res = await restoreTo(img, fetcher, join(dir, 'out.img'), { concurrency: 1 });
    const zeroMax = sha256(Buffer.alloc(CHUNKER.max));
    const zeroTail = sha256(Buffer.alloc(70_000));
    t.false(fetcher.fetched.includes(zeroMax));
    t.is(fetcher.fetched.filter((id) => id === zeroTail).length, 1);
    t.is(res.zeroChunks, 22);
  });
});

test('restoring over an existing larger file leaks none of its old content into holes', async (t) => {
  await withTempDir(async (dir) => {
    const img = sampleImage();
    const path = join(dir, 'out.img');
    await writeFile(path, Buffer.alloc(img.header.size + MiB, 0xee));
    await restoreTo(img, new MemoryFetcher([img]), path);
    const got = await readFile(path);
    t.is(got.length, img.header.size);
    t.true(got.equals(img.image));
  });
});

test('--no-sparse writes the zeros out', async (t) => {
  await withTempDir(async (dir) => {
    const img = sampleImage();
    const path = join(dir, 'out.img');
    const res = await restoreTo(img, new MemoryFetcher([img]), path, { sparse: false });
    t.true((await readFile(path)).equals(img.image));
    t.is(res.bytesWritten, img.header.size);
    t.true((await stat(path)).blocks * 512 >= img.header.size);
  });
});

test('in-place restore downloads only the chunks that differ and reports the bytes reused', async (t) => {
  await withTempDir(async (dir) => {
    const old = sampleImage();
    // The new image shares most chunks with the old one; three chunks change.
    const chunks = old.entries.map((_, i) =>
      old.image.subarray(old.offsets[i], old.offsets[i] + old.entries[i].length),
    );
    const changed = [1, 15, 23];
    const next = chunks.map((c, i) => (changed.includes(i) ? Buffer.alloc(c.length, 0x5a + i) : c));
    const img = imageFromChunks(next);
    const path = join(dir, 'disk.img');
    await writeFile(path, old.image);
    const fetcher = new MemoryFetcher([img]);
    const res = await restoreTo(img, fetcher, path, { inPlace: true });
    t.true((await readFile(path)).equals(img.image));
    t.true(res.verified);
    t.deepEqual([...new Set(fetcher.fetched)].sort(), changed.map((i) => img.entries[i].id).sort());
    t.is(res.chunksFetched, 3);
    t.is(res.bytesReused, img.header.size - changed.reduce((s, i) => s + img.entries[i].length, 0));
  });
});

test('an interrupted restore resumed with --in-place fetches only what is still missing', async (t) => {
  await withTempDir(async (dir) => {
    const img = buildImage(
      Array.from({ length: 40 }, (_, i) => ({ kind: 'random' as const, length: 20_000 + i * 1_000 })),
    );
    const path = join(dir, 'out.img');
    const fetcher = new MemoryFetcher([img]);
    // The "network" dies after 15 chunks.
    const dying = {
      calls: 0,
      async fetch(id: string, length: number) {
        if (++this.calls > 15) throw new DiskvaultError('Unavailable', 'connection lost');
        return await fetcher.fetch(id, length);
      },
    };
    const reader = await openManifest(img);
    const target = await openRestoreTarget(path, { size: img.header.size, sparse: true, inPlace: false });
    await t.throwsAsync(
      restoreSnapshot({
        header: reader.header,
        entryBatches: reader.entryBatches(),
        fetcher: dying,
        target,
        concurrency: 1,
      }),
      {
        message: /connection lost/,
      },
    );
    await target.close();
    fetcher.fetched.length = 0;
    const res = await restoreTo(img, fetcher, path, { inPlace: true, concurrency: 1 });
    t.true((await readFile(path)).equals(img.image));
    t.is(res.chunksReused, 15);
    t.is(fetcher.fetched.length, 25);
    t.true(res.verified);
  });
});

test('restore of a snapshot with a corrupted chunk fails and names the chunk and its byte range', async (t) => {
  await withTempDir(async (dir) => {
    const img = sampleImage();
    const fetcher = new MemoryFetcher([img]);
    const victim = img.entries[2 + 12 + 1 + 3];
    const offset = img.offsets[2 + 12 + 1 + 3];
    fetcher.corrupt.add(victim.id);
    const err = await t.throwsAsync(restoreTo(img, fetcher, join(dir, 'out.img')));
    t.is((err as DiskvaultError).code, 'HashMismatch');
    t.true(err?.message.includes(victim.id));
    t.true(err?.message.includes(`offset ${offset} length ${victim.length}`), err?.message);
  });
});

test('--continue-on-error lists every damaged range, leaves it zero, and does not verify', async (t) => {
  await withTempDir(async (dir) => {
    const img = sampleImage();
    const fetcher = new MemoryFetcher([img]);
    const bad = [0, 15, 16];
    for (const i of bad) fetcher.corrupt.add(img.entries[i].id);
    const path = join(dir, 'out.img');
    const res = await restoreTo(img, fetcher, path, { continueOnError: true });
    t.false(res.verified);
    // 15 and 16 touch: one merged range.
    t.deepEqual(res.damaged, [
      [img.offsets[0], img.entries[0].length],
      [img.offsets[15], img.entries[15].length + img.entries[16].length],
    ]);
    const got = await readFile(path);
    const expected = Buffer.from(img.image);
    for (const i of bad) expected.fill(0, img.offsets[i], img.offsets[i] + img.entries[i].length);
    t.true(got.equals(expected));
  });
});

test('restore to a stream writes the image in order, zeros included', async (t) => {
  const img = sampleImage();
  const out = new PassThrough({ highWaterMark: 64 * 1024 });
  const parts: Buffer[] = [];
  // A slow consumer: backpressure must hold the restore, not buffer the image.
  const consumed = (async () => {
    for await (const p of out) {
      parts.push(p as Buffer);
      await new Promise((r) => setImmediate(r));
    }
  })();
  const reader = await openManifest(img);
  const res = await restoreSnapshot({
    header: reader.header,
    entryBatches: reader.entryBatches(),
    fetcher: new MemoryFetcher([img]),
    target: streamTarget(out),
    concurrency: 8,
  });
  out.end();
  await consumed;
  t.true(Buffer.concat(parts).equals(img.image));
  t.true(res.verified);
});

test('a stream whose last writes fail after they were queued fails the restore, not a verified one', async (t) => {
  const img = buildImage([
    { kind: 'random', length: 8_000 },
    { kind: 'random', length: 6_000 },
  ]);
  // A pipe whose reader goes away: each write is taken into the queue at once and the second fails 20 ms
  // later (EPIPE), after the restore has written its last byte.
  let received = 0;
  const out = new Writable({
    write(chunk: Buffer, _encoding, done) {
      setTimeout(() => {
        if (received > 0) return done(Object.assign(new Error('write EPIPE'), { code: 'EPIPE' }));
        received += chunk.length;
        done();
      }, 20);
    },
  });
  const reader = await openManifest(img);
  const err = await t.throwsAsync(
    restoreSnapshot({
      header: reader.header,
      entryBatches: reader.entryBatches(),
      fetcher: new MemoryFetcher([img]),
      target: streamTarget(out),
    }),
  );
  t.regex(err!.message, /EPIPE/);
  t.is(received, 8_000);
});

test('downloads in flight never exceed the concurrency', async (t) => {
  await withTempDir(async (dir) => {
    const img = buildImage(Array.from({ length: 60 }, () => ({ kind: 'random' as const, length: 10_000 })));
    const inner = new MemoryFetcher([img]);
    let now = 0;
    let peak = 0;
    const fetcher = {
      async fetch(id: string, length: number) {
        peak = Math.max(peak, ++now);
        await new Promise((r) => setTimeout(r, 2));
        try {
          return await inner.fetch(id, length);
        } finally {
          now--;
        }
      },
    };
    const reader = await openManifest(img);
    const target = await openRestoreTarget(join(dir, 'o.img'), {
      size: img.header.size,
      sparse: true,
      inPlace: false,
    });
    await restoreSnapshot({
      header: reader.header,
      entryBatches: reader.entryBatches(),
      fetcher,
      target,
      concurrency: 5,
    });
    await target.close();
    t.is(peak, 5);
  });
});

test('an image whose bytes do not match the manifest hash is reported unverified', async (t) => {
  await withTempDir(async (dir) => {
    const img = buildImage([{ kind: 'random', length: 50_000 }], { sha256: 'b'.repeat(64) });
    const res = await restoreTo(img, new MemoryFetcher([img]), join(dir, 'o.img'));
    t.false(res.verified);
    t.is(res.sha256, sha256(img.image));
  });
});
