import type { SnapshotInfo } from '../../api/protocol.js';
import { isDiskvaultError } from '../../common/errors.js';
import { MANIFEST_ENTRY_BYTES, ManifestReader } from '../../repo-engine/manifest-codec.js';
import { Semaphore } from '../backup/semaphore.js';
import type { DiskvaultClient } from '../client.js';
import { type DamageVerdict, reportDamage } from '../damage-report.js';
import { clientChunkFetcher } from '../restore/client-fetcher.js';
import { DecodePool } from '../restore/decode-pool.js';
import { streamChunkFetcher } from '../restore/stream-fetcher.js';
import { type E2eKeys, openSecrets, secretsContext } from './e2e-keys.js';
import { workerKeys } from './snapshot-key.js';

/** What `diskvault verify --key FILE --read-data` found: the server's VerifyReport shape, from the agent. */
export interface KeyVerifyReport {
  ok: boolean;
  keyId: string;
  snapshotsChecked: number;
  chunksChecked: number;
  bytesRead: number;
  problems: { chunk: string; kind: 'missing' | 'corrupt'; snapshots: string[]; detail: string }[];
  badManifests: { snapshot: string; detail: string }[];
  /** The server's verdict on each corrupt chunk, reported to it so the next backup with the key uploads it again. */
  reported: DamageVerdict[];
  seconds: number;
}

/**
 * Checks every snapshot of one end-to-end key the token may read, from the agent: each manifest's sealed
 * secrets open, and every chunk is downloaded once and opened as a restore would (key id, id bound to its
 * keyed id, GCM tag, decompression within its length, HMAC of the bytes equal to its keyed id). What the
 * server's own verify cannot do for sealed chunks, since it holds no key.
 */
export async function verifyWithKey(
  client: DiskvaultClient,
  keys: E2eKeys,
  opts: {
    concurrency?: number;
    onProgress?: (done: number, total: number) => void;
    /** Told when the corrupt chunks could not be reported to the server. */
    warn?: (line: string) => void;
  } = {},
): Promise<KeyVerifyReport> {
  const started = performance.now();
  const snapshots = (await client.listSnapshots({})).filter((s) => s.e2e?.keyId === keys.keyId);
  const report: KeyVerifyReport = {
    ok: true,
    keyId: keys.keyId,
    snapshotsChecked: 0,
    chunksChecked: 0,
    bytesRead: 0,
    problems: [],
    badManifests: [],
    reported: [],
    seconds: 0,
  };
  // Every distinct chunk once, with the snapshots naming it (a problem names them all).
  const chunks = new Map<string, { length: number; snapshots: string[] }>();
  for (const s of snapshots) {
    try {
      await collectChunks(client, keys, s, chunks);
      report.snapshotsChecked++;
    } catch (err) {
      report.badManifests.push({ snapshot: s.id, detail: (err as Error).message });
    }
  }
  const pool = new DecodePool(undefined, undefined, workerKeys(keys));
  // Over the fetch stream when the server has one (no lease here to learn it from: a server without the
  // route answers the upgrade with 404, and every chunk then goes per request).
  const fetcher = streamChunkFetcher(client, clientChunkFetcher(client));
  const gate = new Semaphore(Math.max(1, opts.concurrency ?? 8));
  let done = 0;
  try {
    await Promise.all(
      [...chunks].map(([id, c]) =>
        gate.use(async () => {
          try {
            const fetched = await fetcher.fetch(id, c.length);
            report.bytesRead += fetched.payload.length;
            await pool.decode({ ...fetched, verified: false }, id, c.length);
          } catch (err) {
            const missing = isDiskvaultError(err) && err.code === 'NotFound';
            report.problems.push({
              chunk: id,
              kind: missing ? 'missing' : 'corrupt',
              snapshots: c.snapshots,
              detail: (err as Error).message,
            });
          }
          report.chunksChecked++;
          opts.onProgress?.(++done, chunks.size);
        }),
      ),
    );
  } finally {
    fetcher.close();
    await pool.close();
  }
  report.problems.sort((a, b) => a.chunk.localeCompare(b.chunk));
  const corrupt = report.problems.filter((p) => p.kind === 'corrupt');
  if (corrupt.length > 0) report.reported = await reportDamage(client, corrupt, opts.warn ?? (() => {}));
  report.ok = report.problems.length === 0 && report.badManifests.length === 0;
  report.seconds = (performance.now() - started) / 1000;
  return report;
}

async function collectChunks(
  client: DiskvaultClient,
  keys: E2eKeys,
  s: SnapshotInfo,
  chunks: Map<string, { length: number; snapshots: string[] }>,
): Promise<void> {
  const reader = await ManifestReader.open(await client.getManifest(s.id), 'wire');
  const h = reader.header;
  if (h.e2e?.keyId !== keys.keyId) throw new Error(`its manifest is not sealed with key ${keys.keyId}`);
  openSecrets(keys, h.e2e.sealed, secretsContext(h), s.id);
  for await (const batch of reader.entryBatches()) {
    for (let at = 0; at < batch.length; at += MANIFEST_ENTRY_BYTES) {
      const id = batch.toString('hex', at, at + 32);
      const length = batch.readUInt32BE(at + 32);
      const c = chunks.get(id);
      if (c === undefined) chunks.set(id, { length, snapshots: [s.id] });
      else if (c.snapshots[c.snapshots.length - 1] !== s.id) c.snapshots.push(s.id);
    }
  }
}
