import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import { closeSync, openSync, readSync } from 'node:fs';
import { open } from 'node:fs/promises';
import zstdBinding from 'zstd-napi/binding.js';
import { cutOffsets } from '../../agent/backup/fastcdc-direct.js';
import { isZero } from '../../agent/backup/zero-runs.js';
import { updateInto } from '../../common/cipher-pieces.js';
import type { ChunkerParams } from '../../repo-engine/manifest-codec.js';
import { chunkEnds } from './chunk-ends.js';

/**
 * The floor of each benchmark step: the work the format requires of each side, priced at this machine's
 * measured rates, with nothing for transport, copies, allocation or waiting. What a step spends above its
 * floor is overhead that can be removed; the floor itself cannot be, short of changing the format.
 *
 * Required work (docs/repository-format.md, docs/performance.md "The floor"):
 * - every backup, agent: read the image; SHA-256 of every non-zero chunk (its id) and of the whole image in
 *   order (the end-to-end check a restore verifies against); FastCDC over the data that is cut (all non-zero
 *   data of a first backup; about the new data of a later night, since unchanged extents are re-hashed, not
 *   re-cut); zstd level 1 of every new chunk;
 * - every backup, server: the upload check of every new chunk (zstd decompression, SHA-256), AES-256-GCM
 *   of what it stores;
 * - restore, agent: zstd decompression and SHA-256 of every non-zero chunk, the whole-image SHA-256;
 * - restore, server: AES-256-GCM of every stored chunk the snapshot uses.
 * Not counted: the kernel's side of storing and writing (page cache copies, fsync), which every tool pays.
 */

/** Bytes per second of each primitive on this machine, measured on the workload's own data where it matters. */
export interface Rates {
  read: number;
  fastcdc: number;
  sha256: number;
  /** zstd level 1, of the new chunks themselves (raw bytes per second). */
  zstdCompress: number;
  /** zstd decompression, raw bytes out per second. */
  zstdDecompress: number;
  aesGcm: number;
}

/** What one night of the workload asks for, in bytes. */
export interface NightWork {
  night: number;
  imageBytes: number;
  /** Bytes of chunks that are not all zeros (zero chunks are recognised, not hashed or sent). */
  dataBytes: number;
  /** Raw bytes of chunks no earlier night had: what this backup compresses, uploads and checks. */
  newRawBytes: number;
  /** Those chunks as stored (zstd level 1, or raw where that saves under 3 %). */
  newStoredBytes: number;
  /** Raw bytes of the new chunks stored compressed (what the server's check decompresses). */
  newZstdRawBytes: number;
  /** Every distinct non-zero chunk of this night's image (what its restore fetches and checks): raw bytes, */
  snapshotRawBytes: number;
  /** raw bytes of those stored compressed (what its restore decompresses), */
  snapshotZstdRawBytes: number;
  /** and stored bytes (what the server reads and decrypts). */
  snapshotStoredBytes: number;
}

export interface StepFloor {
  step: string;
  /** Seconds of CPU the agent cannot avoid, and the server. */
  agent: number;
  server: number;
  /**
   * Wall seconds on `cores` cores at perfect parallelism: the larger of the total CPU over the cores and the
   * one pass that cannot be split (the whole-image SHA-256, in image order).
   */
  wall: number;
}

/** CPU seconds since `start` (a process.cpuUsage() reading): this script's own, whatever else runs. */
function seconds(start: NodeJS.CpuUsage): number {
  const used = process.cpuUsage(start);
  return (used.user + used.system) / 1e6;
}

/**
 * Cuts every night's image as the agent does (chunk-ends.ts: FastCDC with the repository's parameters, zero
 * runs stepped over), and for each night
 * counts its non-zero bytes, its new chunks' raw and stored bytes and the stored bytes its restore reads;
 * compresses the new chunks at level 1 on the way, timing it, and times decompressing them.
 */
export async function measureWork(
  images: string[],
  chunker: ChunkerParams,
): Promise<{ nights: NightWork[]; zstdCompress: number; zstdDecompress: number }> {
  /** Stored size of every chunk seen, negative when stored raw. */
  const storedSize = new Map<string, number>();
  const cctx = new zstdBinding.CCtx();
  const dctx = new zstdBinding.DCtx();
  const out = Buffer.allocUnsafe(zstdBinding.compressBound(chunker.max));
  const back = Buffer.allocUnsafe(chunker.max);
  let compressSeconds = 0;
  let compressedRaw = 0;
  let decompressSeconds = 0;
  let decompressedRaw = 0;
  const nights: NightWork[] = [];
  for (const [night, image] of images.entries()) {
    const file = await open(image, 'r');
    const imageBytes = (await file.stat()).size;
    const seen = new Set<string>();
    let dataBytes = 0;
    let newRawBytes = 0;
    let newStoredBytes = 0;
    let newZstdRawBytes = 0;
    let snapshotRawBytes = 0;
    let snapshotZstdRawBytes = 0;
    let snapshotStoredBytes = 0;
    const chunk = Buffer.allocUnsafe(chunker.max);
    let start = 0;
    for (const end of await chunkEnds(file, imageBytes, chunker)) {
      const length = end - start;
      await file.read(chunk, 0, length, start);
      start = end;
      const bytes = chunk.subarray(0, length);
      if (isZero(bytes, 0, length)) continue;
      dataBytes += length;
      const id = createHash('sha256').update(bytes).digest('hex');
      let stored = storedSize.get(id);
      if (stored === undefined) {
        const t0 = process.cpuUsage();
        const packed = cctx.compress(out, bytes, 1);
        compressSeconds += seconds(t0);
        compressedRaw += length;
        const zstd = packed <= length * 0.97;
        if (zstd) {
          const t1 = process.cpuUsage();
          dctx.decompress(back, out.subarray(0, packed));
          decompressSeconds += seconds(t1);
          decompressedRaw += length;
          newZstdRawBytes += length;
        }
        stored = zstd ? packed : -length;
        storedSize.set(id, stored);
        newRawBytes += length;
        newStoredBytes += Math.abs(stored);
      }
      if (!seen.has(id)) {
        seen.add(id);
        snapshotRawBytes += length;
        if (stored > 0) snapshotZstdRawBytes += length;
        snapshotStoredBytes += Math.abs(stored);
      }
    }
    await file.close();
    nights.push({
      night,
      imageBytes,
      dataBytes,
      newRawBytes,
      newStoredBytes,
      newZstdRawBytes,
      snapshotRawBytes,
      snapshotZstdRawBytes,
      snapshotStoredBytes,
    });
  }
  return {
    nights,
    zstdCompress: compressedRaw / compressSeconds,
    zstdDecompress: decompressedRaw / decompressSeconds,
  };
}

/** Reading a file from the page cache into one reused buffer: the CPU of read(2), bytes per second. */
export function measureRead(image: string): number {
  const fd = openSync(image, 'r');
  const buf = Buffer.allocUnsafe(8 << 20);
  const before = process.cpuUsage();
  let total = 0;
  for (;;) {
    const n = readSync(fd, buf, 0, buf.length, total);
    if (n === 0) break;
    total += n;
  }
  const used = process.cpuUsage(before);
  closeSync(fd);
  return total / ((used.user + used.system) / 1e6);
}

/** CPU seconds (user + system) of `work`, the best of `runs`: load from other processes does not count. */
function cpuSecondsOf(work: () => void, runs = 5): number {
  let best = Number.POSITIVE_INFINITY;
  for (let i = 0; i < runs; i++) {
    const before = process.cpuUsage();
    work();
    const used = process.cpuUsage(before);
    best = Math.min(best, (used.user + used.system) / 1e6);
  }
  return best;
}

/**
 * FastCDC, SHA-256 and AES-256-GCM (in the 32 KiB pieces the server uses, into a reused buffer) over 64 MiB
 * of random bytes, in CPU time, the best of five after warm-ups (the first touch of fresh memory is not the primitive's cost).
 */
export function measurePrimitives(chunker: ChunkerParams): Pick<Rates, 'fastcdc' | 'sha256' | 'aesGcm'> {
  const data = randomBytes(64 << 20);
  const into = Buffer.alloc(data.length + 16);
  const key = randomBytes(32);
  const iv = randomBytes(12);
  const seal = () => {
    const cipher = createCipheriv('aes-256-gcm', key, iv);
    updateInto(cipher, data, into, 0);
    cipher.final();
  };
  for (let i = 0; i < 3; i++) {
    cutOffsets(data, chunker.min, chunker.avg, chunker.max);
    seal();
  }
  return {
    fastcdc: data.length / cpuSecondsOf(() => cutOffsets(data, chunker.min, chunker.avg, chunker.max)),
    sha256: data.length / cpuSecondsOf(() => createHash('sha256').update(data).digest()),
    aesGcm: data.length / cpuSecondsOf(seal),
  };
}

/** Each step's floor from the work it asks for and the machine's rates. */
export function stepFloors(nights: NightWork[], rates: Rates, cores: number): StepFloor[] {
  const steps: StepFloor[] = [];
  const imageHash = (w: NightWork) => w.imageBytes / rates.sha256;
  for (const w of nights) {
    const cut = w.night === 0 ? w.dataBytes : w.newRawBytes;
    const agent =
      w.imageBytes / rates.read +
      cut / rates.fastcdc +
      w.dataBytes / rates.sha256 +
      imageHash(w) +
      w.newRawBytes / rates.zstdCompress;
    const server =
      w.newZstdRawBytes / rates.zstdDecompress +
      w.newRawBytes / rates.sha256 +
      w.newStoredBytes / rates.aesGcm;
    steps.push({
      step: `backup night${w.night}`,
      agent,
      server,
      wall: Math.max((agent + server) / cores, imageHash(w)),
    });
  }
  const last = nights.at(-1);
  if (last) {
    const agent =
      last.snapshotZstdRawBytes / rates.zstdDecompress +
      last.snapshotRawBytes / rates.sha256 +
      imageHash(last);
    const server = last.snapshotStoredBytes / rates.aesGcm;
    steps.push({
      step: `restore night${last.night}`,
      agent,
      server,
      wall: Math.max((agent + server) / cores, imageHash(last)),
    });
  }
  return steps;
}

/** Rates, work and floors of a workload in one call (about a minute for the 2 GiB set with three nights). */
export async function floorOfWorkload(
  images: string[],
  chunker: ChunkerParams,
  cores: number,
): Promise<{ rates: Rates; nights: NightWork[]; floors: StepFloor[] }> {
  const work = await measureWork(images, chunker);
  const rates: Rates = {
    read: measureRead(images[0]),
    ...measurePrimitives(chunker),
    zstdCompress: work.zstdCompress,
    zstdDecompress: work.zstdDecompress,
  };
  return { rates, nights: work.nights, floors: stepFloors(work.nights, rates, cores) };
}
