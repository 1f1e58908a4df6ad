import { Worker } from 'node:worker_threads';
import test from 'ava';
import { BufferRecycler } from '../../repo-engine/buffer-recycler.js';

const KiB = 1024;

test('a buffer given back serves the next request of its size class, and nothing larger', (t) => {
  const r = new BufferRecycler(64 * 1024 * KiB, 256 * KiB);
  const a = r.take(300 * KiB);
  t.is(a.byteLength, 512 * KiB, 'sizes round up to whole classes');
  r.give(a);
  t.is(r.take(600 * KiB).byteLength, 768 * KiB, 'a larger request gets a new buffer');
  t.is(r.reused, 0);
  t.is(r.take(257 * KiB), a, 'a request of the same class gets the buffer back');
  t.is(r.reused, 1);
  t.not(r.take(300 * KiB), a, 'a buffer is handed out once');
});

test('at most maxFreeBytes wait unused; detached and tiny buffers are not kept', (t) => {
  const r = new BufferRecycler(1024 * KiB, 256 * KiB);
  const bufs = [
    r.take(256 * KiB),
    r.take(256 * KiB),
    r.take(256 * KiB),
    r.take(256 * KiB),
    r.take(256 * KiB),
  ];
  for (const b of bufs) r.give(b);
  const back = new Set(Array.from({ length: 5 }, () => r.take(256 * KiB)));
  t.is([...bufs].filter((b) => back.has(b)).length, 4, 'the fifth was over the limit and left to the GC');

  const r2 = new BufferRecycler();
  const detached = r2.take(256 * KiB);
  structuredClone(detached, { transfer: [detached] });
  t.is(detached.byteLength, 0);
  r2.give(detached);
  r2.give(new ArrayBuffer(1000));
  r2.take(256 * KiB);
  t.is(r2.reused, 0);
});

test('transferable: a view from the start of one of ours, or a Buffer spanning its memory, never a pool slice', (t) => {
  const r = new BufferRecycler();
  const ours = r.takeBuffer(1000);
  t.is(r.transferable(ours), ours.buffer as ArrayBuffer);
  t.is(r.transferable(ours.subarray(10)), undefined, 'not from its start');
  const whole = Buffer.allocUnsafeSlow(5000);
  t.is(r.transferable(whole), whole.buffer as ArrayBuffer);
  t.is(r.transferable(Buffer.from('small')), undefined, 'a slice of the shared pool');
  t.is(r.transferable(whole.subarray(0, 100)), undefined, 'a prefix of memory that is not ours');
});

test('a buffer that went to another thread and came back is ours again', async (t) => {
  const r = new BufferRecycler();
  const w = new Worker(
    "require('node:worker_threads').parentPort.on('message', (b) => require('node:worker_threads').parentPort.postMessage(b, [b]))",
    { eval: true },
  );
  t.teardown(() => w.terminate());
  const sent = r.take(1000);
  const back = await new Promise<ArrayBuffer>((resolve) => {
    w.once('message', resolve);
    w.postMessage(sent, [sent]);
  });
  t.is(r.transferable(Buffer.from(back, 0, 10)), undefined, 'a new object on arrival, not known yet');
  r.adopt(back);
  t.is(r.transferable(Buffer.from(back, 0, 10)), back);
});

test('an empty size class is served from a slightly larger free buffer, wasting at most two granules and never more than the request', (t) => {
  const r = new BufferRecycler(64 * 1024 * KiB, 256 * KiB);
  const big = r.take(4 * 256 * KiB);
  const huge = r.take(5 * 256 * KiB);
  r.give(big);
  r.give(huge);
  t.is(
    r.take(2 * 256 * KiB),
    big,
    'class 2 may use a class-4 buffer (two granules, no more than the request)',
  );
  t.is(r.take(2 * 256 * KiB).byteLength, 2 * 256 * KiB, 'but not a class-5 one: a new buffer');
  t.is(r.take(3 * 256 * KiB), huge, 'class 3 may use class 5');
  const two = r.take(2 * 256 * KiB);
  const three = r.take(3 * 256 * KiB);
  r.give(three);
  t.is(
    r.take(256 * KiB).byteLength,
    256 * KiB,
    'class 1 does not take class 3: the waste would exceed the request',
  );
  r.give(two);
  t.is(r.take(256 * KiB), two, 'class 1 takes class 2: the waste equals the request');
  t.is(r.reused, 3);
});
