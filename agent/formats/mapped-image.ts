import { CorruptError } from '../../common/errors.js';
import type { ImageSource } from '../source.js';
import type { ImageFile } from './image-file.js';
import { SECTOR } from './limits.js';

/**
 * What a sparse container says about the bytes at one virtual offset. Each format only answers "where does
 * this offset live"; the copying, coalescing and backing-file fallthrough live once, in MappedImage.
 */
export interface Extent {
  /** data: stored uncompressed at `host`; zero: reads as zeros; backing: comes from the backing image;
   *  compressed: part of the compressed cluster described by host/compressedLength/clusterStart. */
  kind: 'data' | 'zero' | 'backing' | 'compressed';
  /** Bytes from the asked offset that share this answer (at least 1). */
  length: number;
  /** data: file offset of the asked byte. compressed: file offset of the compressed cluster. */
  host: number;
  compressedLength: number;
  /** compressed: virtual offset where the compressed cluster starts. */
  clusterStart: number;
}

export interface BlockMapper {
  /** Fills `out` for virtual `offset`; `out.length` may exceed maxLength (the caller clamps). */
  map(offset: number, maxLength: number, out: Extent): Promise<void>;
  /** The whole decompressed cluster a 'compressed' extent belongs to. */
  decompress?(ext: Extent): Promise<Buffer>;
  close?(): Promise<void>;
}

export function newExtent(): Extent {
  return { kind: 'zero', length: 0, host: 0, compressedLength: 0, clusterStart: 0 };
}

/**
 * An ImageSource over a BlockMapper. Contiguous data clusters are read with one pread straight into the
 * caller's buffer (a sequentially written image becomes a handful of reads per 32 MiB window), unallocated
 * ranges are zero-filled without touching the file, and the last decompressed cluster is kept because
 * window edges split clusters.
 */
export class MappedImage implements ImageSource {
  readonly sectorSize = SECTOR;
  readonly seekable = true;
  private cachedClusterHost = -1;
  private cachedCluster: Buffer | null = null;

  constructor(
    private readonly file: ImageFile,
    readonly format: string,
    readonly size: number,
    private readonly mapper: BlockMapper,
    private readonly backing: ImageSource | null,
  ) {}

  async read(buf: Buffer, offset: number): Promise<number> {
    if (offset >= this.size) return 0;
    const total = Math.min(buf.length, this.size - offset);
    // One extent per call (not per cluster) so that concurrent reads cannot clobber each other's answers.
    const ext = newExtent();
    {
      let runHost = -1;
      let runAt = 0;
      let runLength = 0;
      let done = 0;
      while (done < total) {
        const pos = offset + done;
        await this.mapper.map(pos, total - done, ext);
        const length = Math.min(ext.length, total - done);
        if (!(length > 0))
          throw new CorruptError(`${this.format} mapping of offset ${pos} in ${this.file.name} is empty`);
        if (ext.kind === 'data') {
          if (runLength > 0 && runHost + runLength === ext.host) {
            runLength += length;
          } else {
            if (runLength > 0) await this.file.readInto(buf, runAt, runLength, runHost);
            runHost = ext.host;
            runAt = done;
            runLength = length;
          }
        } else {
          if (runLength > 0) await this.file.readInto(buf, runAt, runLength, runHost);
          runLength = 0;
          if (ext.kind === 'zero') buf.fill(0, done, done + length);
          else if (ext.kind === 'backing') await this.readBacking(buf.subarray(done, done + length), pos);
          else await this.readCompressed(buf, done, length, pos, ext);
        }
        done += length;
      }
      if (runLength > 0) await this.file.readInto(buf, runAt, runLength, runHost);
      return total;
    }
  }

  private async readBacking(target: Buffer, pos: number): Promise<void> {
    // Past the end of a smaller backing image the disk reads as zeros (qemu semantics).
    const got = this.backing ? await this.backing.read(target, pos) : 0;
    if (got < target.length) target.fill(0, got);
  }

  private async readCompressed(
    buf: Buffer,
    at: number,
    length: number,
    pos: number,
    ext: Extent,
  ): Promise<void> {
    if (!this.mapper.decompress)
      throw new CorruptError(`${this.format} image ${this.file.name} has an unexpected compressed cluster`);
    let cluster = this.cachedCluster;
    if (this.cachedClusterHost !== ext.host || !cluster) {
      cluster = await this.mapper.decompress(ext);
      this.cachedCluster = cluster;
      this.cachedClusterHost = ext.host;
    }
    const from = pos - ext.clusterStart;
    cluster.copy(buf, at, from, from + length);
  }

  async close(): Promise<void> {
    try {
      await this.mapper.close?.();
      await this.backing?.close();
    } finally {
      await this.file.close();
    }
  }
}
