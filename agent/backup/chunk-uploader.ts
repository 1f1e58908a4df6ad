import zstdBinding from 'zstd-napi/binding.js';
import { MAX_MISSING_IDS } from '../../api/protocol.js';
import type { BufferRecycler } from '../../repo-engine/buffer-recycler.js';
import { MANIFEST_ENTRY_BYTES } from '../../repo-engine/manifest-codec.js';
import type { ChunkSender } from '../chunk-sender.js';
import type { DiskvaultClient } from '../client.js';
import { SEALED_CHUNK_OVERHEAD } from '../e2e/chunk-sealing.js';
import type { BackupProgress } from './backup.js';
import { IdSet } from './id-set.js';
import type { ManifestSpool } from './manifest-spool.js';
import type { Semaphore } from './semaphore.js';
import type { Window } from './window-ring.js';
import type { WorkerPool } from './worker-pool.js';

const MiB = 1024 * 1024;

/** What a cut hands over: chunk ends (slot positions), their ids, and which ids the cut already set. */
export interface CutChunks {
  ends: Uint32Array;
  ids: Uint8Array;
  hashed: Uint8Array;
}

export interface ChunkUploaderOptions {
  client: DiskvaultClient;
  sessionId: string;
  /** Where new chunks go: the session's chunk stream, or one request each. */
  sender: ChunkSender;
  pool: WorkerPool;
  spool: ManifestSpool;
  /** The ring's slot buffers: an incompressible chunk is sent straight from its window. */
  slotBuffers: Buffer[];
  /** Chunks the repository is known to hold (the previous snapshot's), complete once `seeded` settles. */
  known: IdSet;
  seeded: Promise<void>;
  /** Upload slots, shared by every window. */
  uploads: Semaphore;
  /** Buffers the compressed groups are written into, going round (worker, uploads, back here). */
  compressedBuffers: BufferRecycler;
  /** zstd level. */
  level: number;
  /** End to end: the worker's 'compress' jobs return whole sealed chunks, sent as such. */
  sealed?: boolean;
  progress: BackupProgress;
  /** True once the backup is lost: queued uploads are then dropped instead of spending their retries. */
  failed: () => boolean;
}

/**
 * Takes each cut window's chunks: hashes those the cut did not, records them in the manifest spool in image
 * order, asks the server which it lacks (the ones neither known nor already sent by this run) and compresses
 * and uploads those.
 */
export class ChunkUploader {
  private readonly sentThisRun = new IdSet(4096);
  private spoolChain: Promise<void> = Promise.resolve();

  constructor(private readonly o: ChunkUploaderOptions) {}

  /**
   * Processes window `w`'s chunks, which start at slot position `from`. Called in image order: the manifest
   * lists chunks in that order, whatever order windows finish hashing in.
   */
  process(w: Window, from: number, cut: CutChunks): Promise<void> {
    const appendAfter = this.spoolChain;
    let appended!: () => void;
    this.spoolChain = new Promise<void>((r) => {
      appended = r;
    });
    return this.processChunks(w, from, cut, appendAfter, appended);
  }

  /** Hash the window's chunks, record them in the manifest, upload what the server lacks. */
  private async processChunks(
    w: Window,
    from: number,
    cut: CutChunks,
    appendAfter: Promise<void>,
    appended: () => void,
  ): Promise<void> {
    const { pool, spool, progress, known, client } = this.o;
    const { sentThisRun } = this;
    const { ends, ids } = cut;
    let entries: Buffer;
    try {
      if (cut.hashed.includes(0)) {
        const hashed = await pool.run({ type: 'hash', slot: w.slot, from, ends, skip: cut.hashed });
        for (let i = 0; i < ends.length; i++)
          if (!cut.hashed[i]) ids.set(hashed.ids.subarray(i * 32, i * 32 + 32), i * 32);
      }
      entries = Buffer.alloc(ends.length * MANIFEST_ENTRY_BYTES);
      let start = from;
      for (let i = 0; i < ends.length; i++) {
        entries.set(ids.subarray(i * 32, i * 32 + 32), i * MANIFEST_ENTRY_BYTES);
        entries.writeUInt32BE(ends[i] - start, i * MANIFEST_ENTRY_BYTES + 32);
        start = ends[i];
      }
      // The manifest lists chunks in image order, whatever order windows finish hashing in.
      await appendAfter;
      await spool.append(entries);
    } finally {
      appended();
    }
    await this.o.seeded;
    const candidates: number[] = [];
    let start = from;
    const starts = new Uint32Array(ends.length);
    for (let i = 0; i < ends.length; i++) {
      starts[i] = start;
      const len = ends[i] - start;
      start = ends[i];
      progress.chunks++;
      if (known.has(ids, i * 32) || !sentThisRun.add(ids, i * 32)) {
        progress.knownBytes += len;
        continue;
      }
      // Claimed for this window now, before any await, so no later window uploads the same chunk again.
      candidates.push(i);
    }
    if (candidates.length === 0) return;
    // Asked in binary: no hex strings for ids that are, on a later night, nearly all known.
    const query = Buffer.allocUnsafe(candidates.length * 32);
    candidates.forEach((i, k) => {
      query.set(ids.subarray(i * 32, i * 32 + 32), k * 32);
    });
    const missing = new IdSet(Math.max(16, candidates.length));
    for (let at = 0; at < query.length; at += MAX_MISSING_IDS * 32) {
      const answer = await client.missingBinary(
        this.o.sessionId,
        query.subarray(at, at + MAX_MISSING_IDS * 32),
      );
      for (let k = 0; k < answer.length; k += 32) missing.add(answer, k);
    }
    const toSend: number[] = [];
    for (const i of candidates) {
      if (missing.has(ids, i * 32)) toSend.push(i);
      else progress.knownBytes += ends[i] - starts[i];
    }
    await this.upload(w, toSend, starts, ends, ids);
  }

  /** Compresses chunks `toSend` of window `w` in groups of ~8 MiB and uploads them. */
  private async upload(
    w: Window,
    toSend: number[],
    starts: Uint32Array,
    ends: Uint32Array,
    ids: Uint8Array,
  ): Promise<void> {
    const { pool, progress, compressedBuffers, uploads, level, slotBuffers } = this.o;
    // Compress in groups of ~8 MiB so uploads start before the whole window is compressed.
    const groups: number[][] = [];
    let group: number[] = [];
    let groupBytes = 0;
    for (const i of toSend) {
      group.push(i);
      groupBytes += ends[i] - starts[i];
      if (groupBytes >= 8 * MiB) {
        groups.push(group);
        group = [];
        groupBytes = 0;
      }
    }
    if (group.length > 0) groups.push(group);
    await Promise.all(
      groups.map(async (g) => {
        const ranges = new Uint32Array(g.length * 2);
        let room = 0;
        g.forEach((i, k) => {
          ranges[k * 2] = starts[i];
          ranges[k * 2 + 1] = ends[i];
          room +=
            zstdBinding.compressBound(ends[i] - starts[i]) + (this.o.sealed ? SEALED_CHUNK_OVERHEAD : 0);
        });
        const out = compressedBuffers.take(room);
        const packed = await pool.run({ type: 'compress', slot: w.slot, ranges, level, out }, [out]);
        // Given back only once every upload of the group has finished with it: after a failure, uploads of
        // the group may still be sending from it.
        await Promise.all(
          g.map((i, k) =>
            uploads.use(async () => {
              // Once one upload has failed for good the backup is lost: chunks still queued behind it must not
              // each spend their own retry budget before the failure is reported.
              if (this.o.failed()) return;
              // An incompressible chunk is sent straight from the window: the slot is held until it is sent.
              const payload = packed.compressed[k]
                ? Buffer.from(packed.out, packed.offsets[k], packed.offsets[k + 1] - packed.offsets[k])
                : slotBuffers[w.slot].subarray(starts[i], ends[i]);
              const id = Buffer.from(ids.buffer, ids.byteOffset + i * 32, 32).toString('hex');
              await this.o.sender.put(
                id,
                payload,
                this.o.sealed ? 'sealed' : packed.compressed[k] ? 'zstd' : 'raw',
              );
              progress.newChunks++;
              progress.newBytes += ends[i] - starts[i];
              progress.bytesUploaded += payload.length;
            }),
          ),
        );
        compressedBuffers.give(packed.out);
      }),
    );
  }
}
