/**
 * The floor of a later night's agent work (`node dist/bench/later-night-floor.js IMAGE [ROUNDS]`): what the
 * format requires of a backup into a repository that holds the previous night, and nothing else. Reading the
 * image (from the page cache), SHA-256 of every non-zero chunk (the ids) and one SHA-256 of the whole image
 * in order (what a restore verifies against), on two threads: the main thread reads each window and feeds
 * the image hash, a worker hashes the window's chunks. Windows are 16 MiB in a ring of three shared buffers,
 * allocated and touched before the clock starts. Not counted: cutting (on a later night the chunk map is
 * last night's, checked by these same hashes), compressing and sending new chunks, the server.
 *
 * The chunk boundaries come from one fastcdc pass (agent/backup/window-cutter.ts without a previous
 * snapshot) before the clock starts; then each round reads and hashes the image and prints wall and CPU
 * seconds (user + system of the whole process, both threads) and the bytes hashed.
 */
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { isZero } from '../agent/backup/zero-runs.js';
import { DEFAULT_CHUNKER } from '../repo-engine/config.js';
import { chunkEnds } from './lib/chunk-ends.js';

const WINDOW = 16 * 1024 * 1024;
const SLOTS = 3;

interface HashJob {
  slot: number;
  length: number;
  /** Chunk ends in window coordinates: a chunk may start in an earlier window (its head is hashed there). */
  ends: number[];
  /** The first chunk continues one started in an earlier window. */
  continues: boolean;
  /** The last chunk goes on in the next window. */
  open: boolean;
}

if (isMainThread) await main();
else chunkHasher();

/** The worker: SHA-256 of each chunk, zero chunks recognised by memcmp and not hashed. */
function chunkHasher(): void {
  const slots = (workerData as SharedArrayBuffer[]).map((s) => Buffer.from(s));
  const zeros = Buffer.alloc(DEFAULT_CHUNKER.max);
  let partial: { hash: ReturnType<typeof createHash>; zeroBytes: number | null } | null = null;
  let hashed = 0;
  parentPort!.on('message', (job: HashJob | 'done') => {
    if (job === 'done') {
      parentPort!.postMessage({ hashed });
      hashed = 0;
      return;
    }
    const buf = slots[job.slot];
    let start = 0;
    const pieces = [...job.ends, ...(job.open ? [job.length] : [])];
    pieces.forEach((end, i) => {
      const piece = buf.subarray(start, end);
      const first = i === 0 && job.continues;
      const cur = first && partial ? partial : { hash: createHash('sha256'), zeroBytes: 0 };
      // A chunk split over windows is hashed piece by piece; an all-zero one is never hashed (zeroBytes
      // counts its zeros until a nonzero piece shows they must be hashed after all).
      if (cur.zeroBytes !== null && isZero(piece, 0, piece.length)) cur.zeroBytes += piece.length;
      else {
        if (cur.zeroBytes) cur.hash.update(zeros.subarray(0, cur.zeroBytes));
        hashed += (cur.zeroBytes ?? 0) + piece.length;
        cur.zeroBytes = null;
        cur.hash.update(piece);
      }
      const closed = i < job.ends.length;
      if (closed) {
        cur.hash.digest();
        partial = null;
      } else partial = cur;
      start = end;
    });
    parentPort!.postMessage({ slot: job.slot });
  });
}

async function main(): Promise<void> {
  const image = process.argv[2];
  const rounds = Number(process.argv[3] ?? 3);
  if (!image) throw new Error('usage: node dist/bench/later-night-floor.js IMAGE [ROUNDS]');
  const file = await open(image, 'r');
  const size = (await file.stat()).size;
  const cuts = await chunkEnds(file, size, DEFAULT_CHUNKER);
  const sabs = Array.from({ length: SLOTS }, () => new SharedArrayBuffer(WINDOW));
  const slots = sabs.map((s) => Buffer.from(s));
  for (const s of slots) s.fill(1); // touched before the clock starts
  const worker = new Worker(new URL(import.meta.url), { workerData: sabs });
  const done = new Map<number, () => void>();
  let counted: (n: number) => void = () => {};
  worker.on('message', (m: { slot?: number; hashed?: number }) => {
    if (m.slot !== undefined) done.get(m.slot)?.();
    if (m.hashed !== undefined) counted(m.hashed);
  });
  console.log(`${image}: ${size} bytes, ${cuts.length} chunks (${DEFAULT_CHUNKER.avg >> 20} MiB average)`);
  for (let round = 1; round <= rounds; round++) {
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    const imageHash = createHash('sha256');
    const busy = new Map<number, Promise<void>>();
    let k = 0;
    let previousOpen = false;
    // The next window is read (on libuv's pool) while this one is hashed.
    const readInto = async (slot: number, offset: number, length: number) => {
      await busy.get(slot);
      let got = 0;
      while (got < length) {
        const { bytesRead } = await file.read(slots[slot], got, length - got, offset + got);
        if (bytesRead === 0) throw new Error('image shrank');
        got += bytesRead;
      }
    };
    let reading = readInto(0, 0, Math.min(WINDOW, size));
    for (let offset = 0, w = 0; offset < size; offset += WINDOW, w++) {
      const slot = w % SLOTS;
      const length = Math.min(WINDOW, size - offset);
      await reading;
      if (offset + length < size) {
        const next = offset + length;
        reading = readInto((w + 1) % SLOTS, next, Math.min(WINDOW, size - next));
      }
      const ends: number[] = [];
      const continues = previousOpen;
      while (k < cuts.length && cuts[k] <= offset + length) ends.push(cuts[k++] - offset);
      const open = (ends.at(-1) ?? 0) < length;
      previousOpen = open;
      busy.set(
        slot,
        new Promise<void>((r) => {
          done.set(slot, r);
        }),
      );
      worker.postMessage({ slot, length, ends, continues, open } satisfies HashJob);
      imageHash.update(slots[slot].subarray(0, length));
    }
    await Promise.all(busy.values());
    const digest = imageHash.digest('hex');
    const hashed = await new Promise<number>((r) => {
      counted = r;
      worker.postMessage('done');
    });
    const wall = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    const user = cpu.user / 1e6;
    const system = cpu.system / 1e6;
    console.log(
      `round ${round}: wall ${wall.toFixed(2)} s, cpu ${(user + system).toFixed(2)} s (user ${user.toFixed(2)}, system ${system.toFixed(2)}); chunk ids over ${(hashed / 2 ** 20).toFixed(0)} MiB, image sha256 ${digest.slice(0, 16)}…`,
    );
  }
  await worker.terminate();
  await file.close();
}
