import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import test from 'ava';
import type { FetchedChunk } from '../../agent/restore/chunk-fetcher.js';
import { FetchQueue, type Slot } from '../../agent/restore/fetch-queue.js';
import type { RestoreResult } from '../../agent/restore/restore.js';
import { openRestoreTarget, streamTarget } from '../../agent/restore/restore-target.js';
import { TargetWriter } from '../../agent/restore/target-writer.js';
import { ZeroChunks } from '../../agent/restore/zero-chunks.js';
import { type DiskvaultError, NotFoundError } from '../../common/errors.js';
import { BufferRecycler } from '../../repo-engine/buffer-recycler.js';
import { sha256, withTempDir } from './fixtures.js';

/** The restore pipeline's parts one by one: the fetch queue and the target writer. */
const KiB = 1024;

/** Serves raw chunks after a turn of the event loop, counting how many downloads run at once. */
class CountingFetcher {
  readonly chunks = new Map<string, Buffer>();
  readonly fetched: string[] = [];
  running = 0;
  most = 0;
  add(b: Buffer): string {
    const id = sha256(b);
    this.chunks.set(id, b);
    return id;
  }
  async fetch(id: string): Promise<FetchedChunk> {
    this.fetched.push(id);
    this.most = Math.max(this.most, ++this.running);
    await new Promise((r) => setTimeout(r, 2));
    this.running--;
    const raw = this.chunks.get(id);
    if (!raw) throw new NotFoundError(`chunk ${id} not found`);
    return { encoding: 'raw', payload: Buffer.from(raw) };
  }
}

function emptyResult(size: number): RestoreResult {
  return {
    snapshot: 's',
    size,
    chunks: 0,
    chunksFetched: 0,
    chunksReused: 0,
    zeroChunks: 0,
    bytesWritten: 0,
    bytesFetched: 0,
    bytesReused: 0,
    seconds: 0,
    sha256: null,
    expectedSha256: '',
    verified: false,
    unreadable: [],
    damaged: [],
  };
}

test('the fetch queue hands chunks over in image order, with at most `concurrency` downloads at once', async (t) => {
  const fetcher = new CountingFetcher();
  const bufs = Array.from({ length: 40 }, (_, i) => randomBytes(1000 + i));
  const ids = bufs.map((b) => fetcher.add(b));
  const seen: { offset: number; bytes: Buffer }[] = [];
  const queue: FetchQueue = new FetchQueue({
    fetcher,
    recycler: new BufferRecycler(),
    zeros: new ZeroChunks([64 * KiB], 64 * KiB),
    concurrency: 3,
    consume: async (slot: Slot) => {
      const got = await queue.received(slot);
      if (got instanceof Error) throw got;
      seen.push({ offset: slot.offset, bytes: got });
    },
  });
  let offset = 0;
  for (const [i, id] of ids.entries()) {
    await queue.add(id, offset, bufs[i].length, false);
    offset += bufs[i].length;
  }
  await queue.drain();
  await queue.close();
  t.deepEqual(
    seen.map((s) => s.bytes),
    bufs,
  );
  t.is(seen[39].offset, offset - bufs[39].length);
  t.is(fetcher.most, 3);
  t.is(fetcher.fetched.length, 40);
});

test('the fetch queue downloads a chunk once while it is in flight, learns zero chunks, and never fetches reused ones', async (t) => {
  const fetcher = new CountingFetcher();
  const a = fetcher.add(randomBytes(5000));
  // Not a likely chunk length, so not known as zero until one is fetched.
  const zero = fetcher.add(Buffer.alloc(7000));
  const kinds: string[] = [];
  const queue: FetchQueue = new FetchQueue({
    fetcher,
    recycler: new BufferRecycler(),
    zeros: new ZeroChunks([64 * KiB], 64 * KiB),
    concurrency: 8,
    consume: async (slot) => {
      if (slot.fetched) await queue.received(slot);
      kinds.push(slot.reused ? 'reused' : slot.zero ? 'zero' : 'fetched');
    },
  });
  await queue.add(a, 0, 5000, false);
  await queue.add(a, 5000, 5000, false);
  await queue.add(a, 10000, 5000, true);
  await queue.add(zero, 15000, 7000, false);
  await queue.drain();
  // Known as zero now: the next one is not fetched.
  await queue.add(zero, 22000, 7000, false);
  await queue.drain();
  await queue.close();
  t.deepEqual(fetcher.fetched, [a, zero]);
  t.deepEqual(kinds, ['fetched', 'fetched', 'reused', 'fetched', 'zero']);
});

test('a failed fetch queue closes its decoders only after the downloads it started have settled', async (t) => {
  const late = randomBytes(6000);
  const lateId = sha256(late);
  const missingId = sha256(randomBytes(10));
  let openGate = (): void => {};
  const gate = new Promise<void>((r) => {
    openGate = r;
  });
  let lateDone = false;
  const fetcher = {
    async fetch(id: string): Promise<FetchedChunk> {
      if (id === missingId) throw new NotFoundError(`chunk ${id} not found`);
      await gate;
      lateDone = true;
      // Not checked by the fetcher: the queue decodes it on its decode threads.
      return { encoding: 'raw', payload: Buffer.from(late), verified: false };
    },
  };
  const queue: FetchQueue = new FetchQueue({
    fetcher,
    recycler: new BufferRecycler(),
    zeros: new ZeroChunks([64 * KiB], 64 * KiB),
    concurrency: 2,
    consume: async (slot) => {
      const got = await queue.received(slot);
      if (got instanceof Error) throw got;
    },
  });
  await queue.add(missingId, 0, 10, false);
  await queue.add(lateId, 10, late.length, false);
  await t.throwsAsync(queue.drain(), { message: /not found/ });
  let closed = false;
  const closing = queue.close().then(() => {
    closed = true;
  });
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
  t.false(closed, 'close waits for the download still in flight');
  openGate();
  await closing;
  t.true(lateDone);
  t.true(closed);
});

test('the writer writes fetched bytes, leaves zero chunks as holes, and counts what it did', async (t) => {
  await withTempDir(async (dir) => {
    const data = randomBytes(100 * KiB);
    const zeros = new ZeroChunks([64 * KiB], 64 * KiB);
    zeros.learn(sha256(Buffer.alloc(64 * KiB)), Buffer.alloc(64 * KiB));
    const path = join(dir, 'out.img');
    const target = await openRestoreTarget(path, { size: 164 * KiB, sparse: true, inPlace: false });
    const result = emptyResult(164 * KiB);
    const progress: number[] = [];
    const writer = new TargetWriter({
      target,
      zeros,
      recycler: new BufferRecycler(),
      imageHash: undefined,
      result,
      total: 164 * KiB,
      continueOnError: false,
      received: async (slot) => (await slot.fetched)!,
      onProgress: (p) => progress.push(p.done),
    });
    await writer.finish({ id: sha256(data), offset: 0, length: data.length, fetched: Promise.resolve(data) });
    await writer.finish({
      id: sha256(Buffer.alloc(64 * KiB)),
      offset: 100 * KiB,
      length: 64 * KiB,
      zero: true,
    });
    await writer.flush();
    await target.finish();
    await target.close();
    t.deepEqual(await readFile(path), Buffer.concat([data, Buffer.alloc(64 * KiB)]));
    t.is(result.bytesWritten, 100 * KiB);
    t.is(result.chunksFetched, 1);
    t.is(result.zeroChunks, 1);
    t.deepEqual(progress, [100 * KiB, 164 * KiB]);
  });
});

test('a damaged chunk stops the writer naming it, or with continueOnError becomes zeros and a damaged range', async (t) => {
  const damage = new NotFoundError('chunk x not found');
  const make = (continueOnError: boolean, out: Buffer[]) => {
    const stream = new PassThrough();
    stream.on('data', (b: Buffer) => out.push(b));
    const result = emptyResult(3000);
    const writer = new TargetWriter({
      target: streamTarget(stream),
      zeros: new ZeroChunks([64 * KiB], 64 * KiB),
      recycler: new BufferRecycler(),
      imageHash: undefined,
      result,
      total: 3000,
      continueOnError,
      received: async (slot) => (await slot.fetched)!,
    });
    return { writer, result };
  };
  const slot = (): Slot => ({
    id: 'ab'.repeat(32),
    offset: 0,
    length: 3000,
    fetched: Promise.resolve(damage),
  });
  const strict = make(false, []);
  const err = (await t.throwsAsync(strict.writer.finish(slot()))) as DiskvaultError;
  t.is(err.code, 'HashMismatch');
  t.is(
    err.message,
    `chunk ${'ab'.repeat(32)} (image bytes 0..2999, offset 0 length 3000) is damaged: chunk x not found`,
  );
  const out: Buffer[] = [];
  const lenient = make(true, out);
  await lenient.writer.finish(slot());
  t.deepEqual(lenient.result.damaged, [[0, 3000]]);
  t.deepEqual(Buffer.concat(out), Buffer.alloc(3000));
});

test('once the signal has fired the writer writes nothing more and throws its reason', async (t) => {
  const ctl = new AbortController();
  const out: Buffer[] = [];
  const stream = new PassThrough();
  stream.on('data', (b: Buffer) => out.push(b));
  const writer = new TargetWriter({
    target: streamTarget(stream),
    zeros: new ZeroChunks([64 * KiB], 64 * KiB),
    recycler: new BufferRecycler(),
    imageHash: undefined,
    result: emptyResult(200),
    total: 200,
    continueOnError: false,
    received: async (slot) => (await slot.fetched)!,
    signal: ctl.signal,
  });
  const bytes = randomBytes(100);
  await writer.finish({ id: sha256(bytes), offset: 0, length: 100, fetched: Promise.resolve(bytes) });
  ctl.abort(new Error('interrupted'));
  const err = await t.throwsAsync(
    writer.finish({ id: sha256(bytes), offset: 100, length: 100, fetched: Promise.resolve(bytes) }),
  );
  t.is(err!.message, 'interrupted');
  t.deepEqual(Buffer.concat(out), bytes);
});
