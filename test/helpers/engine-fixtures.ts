import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { compress } from 'zstd-napi';
import {
  type ChunkerParams,
  encodeManifest,
  type ManifestEntry,
  ManifestReader,
} from '../../repo-engine/manifest-codec.js';
import { Repository, type RepositoryOptions } from '../../repo-engine/repository.js';
import { MemoryKeyStore } from '../../repo-engine/repository-key.js';
import type { SnapshotInfo } from '../../repo-engine/types.js';
import type { StorageAdapter } from '../../storage-adapters/adapter.js';
import { openLocalStorage } from '../../storage-adapters/local.js';
import { openS3Storage } from '../../storage-adapters/s3.js';
import { MemoryStorage } from './engine-memory-storage.js';
import { type FakeS3, startFakeS3 } from './fake-s3.js';

/** Small chunks keep tests fast while exercising every path a 1 MiB chunk would. */
export const TEST_CHUNKER: ChunkerParams = { min: 1024, avg: 4096, max: 16384 };

export type BackendName = 'memory' | 'local' | 's3';

/**
 * The storage backends every engine behaviour is tested on. The fake S3 server is started once per test
 * file (lazily) and each repository gets its own key prefix in it.
 */
export class Backends {
  private s3: Promise<FakeS3> | undefined;
  readonly names: BackendName[] = ['memory', 'local', 's3'];

  async open(name: BackendName, dir: string): Promise<StorageAdapter> {
    if (name === 'memory') return new MemoryStorage();
    if (name === 'local') return openLocalStorage(path.join(dir, 'storage'));
    this.s3 ??= startFakeS3();
    const s3 = await this.s3;
    return openS3Storage({
      endpoint: s3.endpoint,
      region: s3.region,
      bucket: s3.bucket,
      prefix: `t-${randomBytes(6).toString('hex')}/`,
      forcePathStyle: true,
      credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
      pageSize: 50,
    });
  }

  async stop(): Promise<void> {
    if (this.s3) await (await this.s3).stop();
  }
}

export class Clock {
  constructor(public t = Date.UTC(2024, 0, 1)) {}
  now = (): number => this.t;
  advance(ms: number): void {
    this.t += ms;
  }
}

export interface RepoFixture {
  repo: Repository;
  storage: StorageAdapter;
  dir: string;
  indexPath: string;
  clock: Clock;
  logs: string[];
  reopen(extra?: Partial<RepositoryOptions>): Promise<Repository>;
  cleanup(): Promise<void>;
}

export async function openFixture(
  backends: Backends,
  name: BackendName,
  extra: Partial<RepositoryOptions> = {},
): Promise<RepoFixture> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'dv-engine-'));
  const storage = await backends.open(name, dir);
  const clock = new Clock();
  const logs: string[] = [];
  const indexPath = path.join(dir, 'index.sqlite');
  // Encrypted, as every new repository is by default; a test wanting format 1 passes encryption 'none'.
  const keyStore = new MemoryKeyStore();
  const options = (more: Partial<RepositoryOptions>): RepositoryOptions => ({
    storage,
    indexPath,
    keyStore,
    chunker: TEST_CHUNKER,
    now: clock.now,
    log: (m) => logs.push(m),
    ...extra,
    ...more,
  });
  const fx: RepoFixture = {
    repo: await Repository.open(options({})),
    storage,
    dir,
    indexPath,
    clock,
    logs,
    async reopen(more = {}) {
      await fx.repo.close();
      fx.repo = await Repository.open(options(more));
      return fx.repo;
    },
    async cleanup() {
      await fx.repo.close();
      await storage.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
  return fx;
}

/** Deterministic pseudo-random bytes (xorshift), so a failing seed can be replayed. */
export function seededRandom(seed: number): () => number {
  let x = seed >>> 0 || 0x9e3779b9;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 0x100000000;
  };
}

export function sha256(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

/** An image built from a small palette of blocks, so images made from one palette share chunks. */
export function makeImage(rand: () => number, blocks: number, palette: Buffer[]): Buffer {
  return Buffer.concat(
    Array.from({ length: blocks }, () => palette[Math.floor(rand() * palette.length)] as Buffer),
  );
}

export function makePalette(rand: () => number, count: number, size = 4096): Buffer[] {
  return Array.from({ length: count }, (_, i) => {
    const b = Buffer.alloc(size);
    // Half compressible, half not: both storage encodings get exercised.
    if (i % 2 === 0) b.fill(`block-${i}-`);
    else for (let j = 0; j < size; j++) b[j] = Math.floor(rand() * 256);
    return b;
  });
}

/** Fixed-size chunking: the engine does not care how chunks were cut, only that each is <= max. */
export function chunkImage(image: Buffer, size = 4096): Buffer[] {
  const out: Buffer[] = [];
  for (let at = 0; at < image.length; at += size)
    out.push(image.subarray(at, Math.min(image.length, at + size)));
  return out;
}

export function manifestFor(
  host: string,
  disk: string,
  chunks: Buffer[],
  opts: { time?: string; tags?: string[]; chunker?: ChunkerParams } = {},
): Buffer {
  const image = Buffer.concat(chunks);
  const entries: ManifestEntry[] = chunks.map((c) => ({ id: sha256(c), length: c.length }));
  return encodeManifest(
    {
      formatVersion: 1,
      host,
      disk,
      time: opts.time ?? '2024-01-01T00:00:00.000Z',
      size: image.length,
      sha256: sha256(image),
      chunker: opts.chunker ?? TEST_CHUNKER,
      tags: opts.tags ?? [],
      unreadable: [],
      sourceFormat: 'raw',
      chunkCount: entries.length,
    },
    entries,
  );
}

/** What an agent does: ask which chunks are missing, upload those (alternately raw and zstd), commit. */
export async function backup(
  repo: Repository,
  image: Buffer,
  opts: { host?: string; disk?: string; tenant?: string; time?: string; tags?: string[] } = {},
): Promise<SnapshotInfo> {
  const host = opts.host ?? 'pc1';
  const disk = opts.disk ?? 'sda';
  const session = await repo.beginSession(host, disk, opts.tenant);
  const chunks = chunkImage(image);
  const byId = new Map(chunks.map((c) => [sha256(c), c]));
  const missing = await repo.filterMissing(session.id, [...byId.keys()]);
  let i = 0;
  for (const id of missing) {
    const raw = byId.get(id) as Buffer;
    if (i++ % 2 === 0) await repo.putChunk(session.id, id, raw, 'raw');
    else await repo.putChunk(session.id, id, compress(raw, { compressionLevel: 3 }), 'zstd');
  }
  return repo.commit(session.id, bodyOf(manifestFor(host, disk, chunks, opts)));
}

export async function manifestEntries(
  repo: Repository,
  id: string,
): Promise<{ id: string; length: number }[]> {
  const reader = await ManifestReader.open(await repo.openManifest(id), 'storage');
  const out: { id: string; length: number }[] = [];
  for await (const e of reader.entries()) out.push(e);
  return out;
}

export async function restore(repo: Repository, id: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (const e of await manifestEntries(repo, id)) parts.push(await repo.readChunk(e.id));
  return Buffer.concat(parts);
}

/** The index's refcounts read straight from the SQLite file, as hex id -> count. */
export function indexRefcounts(indexPath: string): Map<string, number> {
  const db = new Database(indexPath, { readonly: true, fileMustExist: true });
  try {
    const rows = db.prepare('SELECT lower(hex(id)) AS id, refcount FROM chunks ORDER BY id').all() as {
      id: string;
      refcount: number;
    }[];
    return new Map(rows.map((r) => [r.id, r.refcount]));
  } finally {
    db.close();
  }
}

/** Refcounts recounted from every snapshot's manifest (a chunk named twice counts twice). */
export async function recount(repo: Repository): Promise<Map<string, number>> {
  const counts = new Map<string, number>();
  for (const s of repo.listSnapshots())
    for (const e of await manifestEntries(repo, s.id)) counts.set(e.id, (counts.get(e.id) ?? 0) + 1);
  return counts;
}

/** Only the referenced part of the index (refcount > 0), comparable with a recount. */
export function referenced(counts: Map<string, number>): Map<string, number> {
  return new Map([...counts].filter(([, n]) => n > 0).sort(([a], [b]) => (a < b ? -1 : 1)));
}

/** A commit body as the server hands it over: an async stream of pieces (split to cross piece borders). */
export async function* bodyOf(manifest: Buffer, piece = 1000): AsyncGenerator<Buffer> {
  for (let at = 0; at < manifest.length; at += piece) yield manifest.subarray(at, at + piece);
}
