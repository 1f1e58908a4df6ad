import { createHash } from 'node:crypto';
import { compress } from 'zstd-napi';
import type { SnapshotInfo } from '../../api/protocol.js';
import { DiskvaultError, InvalidInputError, isDiskvaultError } from '../../common/errors.js';
import { compressionWorthwhile } from '../../common/limits.js';
import type { ManifestHeader } from '../../repo-engine/manifest-codec.js';
import type { DiskvaultClient } from '../client.js';
import { e2eChunkId, sealChunk } from '../e2e/chunk-sealing.js';
import type { E2eKeys } from '../e2e/e2e-keys.js';
import type { ImageSource } from '../source.js';
import type { BackupProgress } from './backup.js';
import type { ManifestSpool } from './manifest-spool.js';
import { readResilient } from './resilient-read.js';
import { Semaphore } from './semaphore.js';

export interface CommitterOptions {
  client: DiskvaultClient;
  source: ImageSource;
  sessionId: string;
  spool: ManifestSpool;
  /** zstd level for chunks uploaded again. */
  level: number;
  /** Chunk uploads in flight when uploading again. */
  concurrency: number;
  /** Commits tried when the server names chunks it lacks. */
  attempts: number;
  progress: BackupProgress;
  /** An end-to-end backup's key: chunks uploaded again are keyed and sealed like the others. */
  e2e?: E2eKeys;
}

/**
 * Commits the manifest; when the server names chunks it lacks (gc removed them since the previous snapshot,
 * or another tenant holds them), reads those chunks from the source again, uploads them and commits again.
 */
export class Committer {
  constructor(private readonly o: CommitterOptions) {}

  async commit(header: ManifestHeader): Promise<SnapshotInfo> {
    const { o } = this;
    const attempts = o.attempts;
    for (let attempt = 1; ; attempt++) {
      try {
        return await o.client.commit(o.sessionId, () => o.spool.manifest(header));
      } catch (err) {
        const missing = isDiskvaultError(err) && err.code === 'Conflict' ? err.details?.missing : undefined;
        if (!Array.isArray(missing) || missing.length === 0) throw err;
        if (attempt >= attempts) {
          throw new DiskvaultError(
            'Conflict',
            `the server still lacks ${missing.length} chunks after ${attempts} commits`,
            {
              missing,
            },
          );
        }
        if (!o.source.seekable) {
          throw new DiskvaultError(
            'Conflict',
            `the server lacks ${missing.length} chunks the agent believed it held, and a piped image cannot be read again: run the backup again`,
            { missing },
          );
        }
        await this.uploadAgain(new Set(missing as string[]));
      }
    }
  }

  private async uploadAgain(wanted: Set<string>): Promise<void> {
    const { o } = this;
    const { progress, level } = o;
    const located = await o.spool.locate(wanted);
    const gate = new Semaphore(o.concurrency);
    await Promise.all(
      located.map((c) =>
        gate.use(async () => {
          const buf = Buffer.alloc(c.length);
          const got = await readResilient(o.source, buf, c.offset);
          const piece = buf.subarray(0, got.bytes);
          const keyed = o.e2e ? e2eChunkId(o.e2e, piece) : undefined;
          const actual = keyed ? keyed.id.toString('hex') : createHash('sha256').update(piece).digest('hex');
          if (got.bytes !== c.length || actual !== c.id) {
            throw new InvalidInputError(
              `the source changed during the backup: bytes ${c.offset}..${c.offset + c.length} no longer match chunk ${c.id}`,
            );
          }
          const z = compress(buf, { compressionLevel: level });
          const useZ = compressionWorthwhile(z.length, buf.length);
          const payload =
            keyed && o.e2e ? sealChunk(o.e2e, keyed.kid, buf.length, useZ ? z : buf, useZ) : useZ ? z : buf;
          await o.client.putChunk(o.sessionId, c.id, payload, keyed ? 'sealed' : useZ ? 'zstd' : 'raw');
          progress.newChunks++;
          progress.newBytes += c.length;
          progress.bytesUploaded += payload.length;
        }),
      ),
    );
  }
}
