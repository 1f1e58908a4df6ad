import { createHash } from 'node:crypto';
import { parentPort, workerData } from 'node:worker_threads';
import zstdBinding from 'zstd-napi/binding.js';
import { compressionWorthwhile } from '../../common/limits.js';
import type { ChunkerParams } from '../../repo-engine/manifest-codec.js';
import { e2eChunkId, sealChunk } from '../e2e/chunk-sealing.js';
import type { E2eWorkerKeys } from '../e2e/e2e-keys.js';
import { cutOffsets, reserveCutCapacity } from './fastcdc-direct.js';
import type { PreviousSlice } from './previous-manifest.js';
import { cutWindow } from './window-cutter.js';
import { zeroRunCutter } from './zero-runs.js';

/**
 * The CPU-heavy half of a backup, run off the main thread: cutting (fastcdc), hashing chunks, compressing
 * the chunks the server lacks, and (in its own worker) the whole-image hash. Windows live in
 * SharedArrayBuffers handed over once at start, so a job names a slot and a range and nothing is copied.
 */
export interface WorkerInit {
  slots: SharedArrayBuffer[];
  chunker: ChunkerParams;
  /**
   * An end-to-end backup's keys: chunk ids are then keyed (repo-engine/sealed-chunk.ts domainChunkId of
   * HMAC-SHA256(idKey, raw)) and 'compress' jobs return sealed chunks.
   */
  e2e?: E2eWorkerKeys;
  /** Largest range a cut job covers: fastcdc's WASM memory is grown to it once, up front. */
  warmBytes: number;
}

export type Job =
  | {
      type: 'cut';
      slot: number;
      from: number;
      to: number;
      final: boolean;
      /** Image offset of slot position `from`. */
      imageOffset: number;
      imageSize: number | null;
      previous: PreviousSlice | null;
    }
  /** Chunks whose `skip` flag is 1 were hashed by the cut already: their ids come back as zeros. */
  | { type: 'hash'; slot: number; from: number; ends: Uint32Array; skip?: Uint8Array }
  /**
   * `out` (transferred, and back in the result) has room for zstdBound of every range (plus
   * SEALED_CHUNK_OVERHEAD each in an end-to-end backup): the compressed chunks are written into it one
   * after another, so no buffer is allocated per chunk. End to end, each is a whole sealed chunk.
   */
  | { type: 'compress'; slot: number; ranges: Uint32Array; level: number; out: ArrayBuffer }
  | { type: 'image-update'; slot: number; from: number; to: number }
  | { type: 'image-digest' };

export type JobResult =
  /** hashed[i] is 1 when ids[i*32..] holds chunk i's id already (the previous snapshot's, verified). */
  | {
      type: 'cut';
      ends: Uint32Array;
      carryFrom: number;
      ids: Uint8Array;
      hashed: Uint8Array;
      reusedBytes: number;
    }
  | { type: 'hash'; ids: Uint8Array; zero: Uint8Array }
  /**
   * Chunk k's zstd frame is out[offsets[k], offsets[k + 1]); it is empty when compressed[k] is 0: the raw
   * bytes are sent from the window itself.
   */
  | { type: 'compress'; out: ArrayBuffer; offsets: Uint32Array; compressed: Uint8Array }
  | { type: 'image-update' }
  | { type: 'image-digest'; sha256: string };

const init = workerData as WorkerInit;
const slots = init.slots.map((sab) => Buffer.from(sab));
const { max } = init.chunker;
const zeros = Buffer.alloc(max);
/** SHA-256 of n zero bytes, by n: zero chunks (sparse regions) are recognised by memcmp and never hashed. */
const zeroIds = new Map<number, Buffer>();
let imageHash = createHash('sha256');
/**
 * One compression context for the worker's life, writing into the buffer each job brings: zstd-napi's
 * compress() allocates a compressBound-sized buffer per call, megabytes of garbage a chunk that V8 collects
 * late (it showed as ~100 MB of extra RSS on a 2 GiB backup).
 */
const cctx = new zstdBinding.CCtx();

/** fastcdc's cuts, with zero runs (a disk's free space) stepped over by a scan instead of cut byte by byte. */
const cutPoints = zeroRunCutter(cutOffsets);

// The first cut of a large range grows WASM memory (slow); pay that once here, not in the first window.
if (init.warmBytes > 0) reserveCutCapacity(init.warmBytes);

const e2e = init.e2e
  ? {
      keyId: init.e2e.keyId,
      keyIdBytes: Buffer.from(init.e2e.keyId, 'hex'),
      idKey: Buffer.from(init.e2e.idKey),
      chunkKey: Buffer.from(init.e2e.chunkKey),
    }
  : undefined;

/** The repository id of a chunk's bytes: SHA-256, or end to end the key's domain id of its keyed id. */
function idOf(piece: Uint8Array): Buffer {
  return e2e ? e2eChunkId(e2e, piece).id : createHash('sha256').update(piece).digest();
}

/** A chunk's id; all-zero chunks (sparse regions) are recognised by memcmp and hashed once per length. */
function chunkId(piece: Uint8Array): Buffer {
  const len = piece.length;
  if (len <= zeros.length && zeros.subarray(0, len).equals(piece)) {
    let id = zeroIds.get(len);
    if (!id) {
      id = idOf(piece);
      zeroIds.set(len, id);
    }
    return id;
  }
  return idOf(piece);
}

function run(job: Job): { result: JobResult; transfer: ArrayBuffer[] } {
  switch (job.type) {
    case 'cut': {
      const cut = cutWindow(
        {
          buf: slots[job.slot],
          from: job.from,
          to: job.to,
          final: job.final,
          imageOffset: job.imageOffset,
          imageSize: job.imageSize,
          chunker: init.chunker,
          previous: job.previous,
        },
        cutPoints,
        chunkId,
      );
      const n = cut.ends.length;
      const ends = Uint32Array.from(cut.ends);
      const ids = new Uint8Array(n * 32);
      const hashed = new Uint8Array(n);
      cut.ids.forEach((id, i) => {
        if (!id) return;
        ids.set(id, i * 32);
        hashed[i] = 1;
      });
      return {
        result: { type: 'cut', ends, carryFrom: cut.carryFrom, ids, hashed, reusedBytes: cut.reusedBytes },
        transfer: [ends.buffer as ArrayBuffer, ids.buffer as ArrayBuffer, hashed.buffer as ArrayBuffer],
      };
    }
    case 'hash': {
      const buf = slots[job.slot];
      const n = job.ends.length;
      const ids = Buffer.alloc(n * 32);
      const zero = new Uint8Array(n);
      let start = job.from;
      for (let i = 0; i < n; i++) {
        const end = job.ends[i];
        if (!job.skip?.[i]) {
          const piece = buf.subarray(start, end);
          const id = chunkId(piece);
          if (id === zeroIds.get(piece.length)) zero[i] = 1;
          id.copy(ids, i * 32);
        }
        start = end;
      }
      return {
        result: { type: 'hash', ids, zero },
        transfer: [ids.buffer as ArrayBuffer, zero.buffer as ArrayBuffer],
      };
    }
    case 'compress': {
      const buf = slots[job.slot];
      const out = new Uint8Array(job.out);
      const n = job.ranges.length / 2;
      const compressed = new Uint8Array(n);
      const offsets = new Uint32Array(n + 1);
      let at = 0;
      for (let k = 0; k < n; k++) {
        const raw = buf.subarray(job.ranges[k * 2], job.ranges[k * 2 + 1]);
        if (e2e) {
          at += sealInto(out, at, raw, job.level);
          compressed[k] = 1;
          offsets[k + 1] = at;
          continue;
        }
        const length = cctx.compress(
          out.subarray(at, at + zstdBinding.compressBound(raw.length)),
          raw,
          job.level,
        );
        // Not worth the server's decompression when it saves under 3%: the main thread sends the raw bytes
        // straight from the shared window, and the next chunk overwrites this attempt.
        if (compressionWorthwhile(length, raw.length)) {
          compressed[k] = 1;
          at += length;
        }
        offsets[k + 1] = at;
      }
      return {
        result: { type: 'compress', out: job.out, offsets, compressed },
        transfer: [job.out, offsets.buffer as ArrayBuffer, compressed.buffer as ArrayBuffer],
      };
    }
    case 'image-update':
      imageHash.update(slots[job.slot].subarray(job.from, job.to));
      return { result: { type: 'image-update' }, transfer: [] };
    case 'image-digest': {
      const sha256 = imageHash.digest('hex');
      imageHash = createHash('sha256');
      return { result: { type: 'image-digest', sha256 }, transfer: [] };
    }
  }
}

let sealScratch: Buffer | undefined;

/**
 * Seals one chunk end to end into out[at..]: compressed first (when that saves 3%), then encrypted, the
 * whole sealed chunk written where the main thread sends it from. Returns its length.
 */
function sealInto(out: Uint8Array, at: number, raw: Uint8Array, level: number): number {
  if (!e2e) throw new Error('not an end-to-end backup');
  const bound = zstdBinding.compressBound(raw.length);
  if (!sealScratch || sealScratch.length < bound) sealScratch = Buffer.allocUnsafe(bound);
  const packed = cctx.compress(sealScratch.subarray(0, bound), raw, level);
  const zstd = compressionWorthwhile(packed, raw.length);
  const { kid } = e2eChunkId(e2e, raw);
  const target = Buffer.from(out.buffer, out.byteOffset + at, out.byteLength - at);
  return sealChunk(e2e, kid, raw.length, zstd ? sealScratch.subarray(0, packed) : raw, zstd, target).length;
}

parentPort!.on('message', (msg: { seq: number; job: Job }) => {
  try {
    const { result, transfer } = run(msg.job);
    parentPort!.postMessage({ seq: msg.seq, result }, transfer);
  } catch (err) {
    parentPort!.postMessage({
      seq: msg.seq,
      error: { message: (err as Error).message, code: (err as NodeJS.ErrnoException).code },
    });
  }
});
