import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { compress } from 'zstd-napi';
import type { ChunkFetcher, FetchedChunk } from '../../agent/restore/chunk-fetcher.js';
import { NotFoundError } from '../../common/errors.js';
import {
  encodeManifest,
  type ManifestEntry,
  type ManifestHeader,
  ManifestReader,
} from '../../repo-engine/manifest-codec.js';

/** Test material for the restore core: an image cut into chunks, its manifest, and an in-memory repository. */
export const CHUNKER = { min: 16 * 1024, avg: 64 * 1024, max: 256 * 1024 };

export interface Piece {
  kind: 'random' | 'zero' | 'text';
  length: number;
}

export interface TestImage {
  image: Buffer;
  entries: ManifestEntry[];
  offsets: number[];
  manifest: Buffer;
  header: ManifestHeader;
}

export function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

export function buildImage(pieces: Piece[], extra: Partial<ManifestHeader> = {}): TestImage {
  const bufs = pieces.map((p) =>
    p.kind === 'zero'
      ? Buffer.alloc(p.length)
      : p.kind === 'random'
        ? randomBytes(p.length)
        : Buffer.from('diskvault restore test '.repeat(Math.ceil(p.length / 23)).slice(0, p.length)),
  );
  return imageFromChunks(bufs, extra);
}

export function imageFromChunks(bufs: Buffer[], extra: Partial<ManifestHeader> = {}): TestImage {
  const image = Buffer.concat(bufs);
  const entries = bufs.map((b) => ({ id: sha256(b), length: b.length }));
  const offsets: number[] = [];
  let at = 0;
  for (const b of bufs) {
    offsets.push(at);
    at += b.length;
  }
  const header: ManifestHeader = {
    formatVersion: 1,
    id: 'a'.repeat(64),
    host: 'web1',
    disk: 'sda',
    time: '2026-01-01T00:00:00.000Z',
    size: image.length,
    sha256: sha256(image),
    chunker: CHUNKER,
    tags: [],
    unreadable: [],
    sourceFormat: 'raw',
    chunkCount: entries.length,
    ...extra,
  };
  return { image, entries, offsets, manifest: encodeManifest(header, entries), header };
}

export async function openManifest(img: TestImage): Promise<ManifestReader> {
  return await ManifestReader.open(Readable.from([img.manifest]), 'wire');
}

/** An in-memory repository: serves chunks zstd-compressed (as the server does) and counts what was asked. */
export class MemoryFetcher implements ChunkFetcher {
  readonly chunks = new Map<string, Buffer>();
  readonly fetched: string[] = [];
  /** Ids whose payload is served with one byte flipped. */
  readonly corrupt = new Set<string>();
  constructor(images: TestImage[] = []) {
    for (const img of images) this.add(img);
  }
  add(img: TestImage): void {
    let at = 0;
    for (const e of img.entries) {
      this.chunks.set(e.id, img.image.subarray(at, at + e.length));
      at += e.length;
    }
  }
  async fetch(id: string, _length?: number): Promise<FetchedChunk> {
    this.fetched.push(id);
    const raw = this.chunks.get(id);
    if (!raw) throw new NotFoundError(`chunk ${id} not found`);
    await new Promise((r) => setImmediate(r));
    if (this.corrupt.has(id)) {
      const bad = Buffer.from(raw);
      bad[bad.length >> 1] ^= 0x40;
      return { encoding: 'raw', payload: bad };
    }
    return { encoding: 'zstd', payload: compress(raw, { compressionLevel: 1 }) };
  }
}

export async function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'diskvault-restore-test-'));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
