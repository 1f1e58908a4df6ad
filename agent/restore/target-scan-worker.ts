import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import { parentPort, workerData } from 'node:worker_threads';
import { MANIFEST_ENTRY_BYTES } from '../../repo-engine/manifest-codec.js';
import { e2eChunkId } from '../e2e/chunk-sealing.js';
import { SequentialReader } from './sequential-reader.js';

/**
 * The in-place comparison, off the main thread: reads the target front to back in large blocks (one read
 * ahead, so the disk and the hash overlap) and answers, for each batch of manifest entries it is sent in
 * order, which chunks the target already holds (1) and which must be rewritten (0).
 */
export interface ScanInit {
  path: string;
  size: number;
  /** Ids known to be zero runs: compared with memcmp instead of hashed. */
  zeroIds: string[];
  /** An end-to-end snapshot's keys: its ids are keyed (agent/e2e/chunk-sealing.ts e2eChunkId), not SHA-256. */
  e2e?: { keyId: string; idKey: Uint8Array };
}

export type ScanRequest = { t: 'batch'; entries: ArrayBuffer };
export type ScanReply = { t: 'matches'; flags: ArrayBuffer } | { t: 'error'; message: string };

const port = parentPort;
if (!port) throw new Error('target-scan-worker must run as a worker thread');
const init = workerData as ScanInit;
const zeroIds = new Set(init.zeroIds);
const e2e = init.e2e
  ? { idKey: Buffer.from(init.e2e.idKey), keyIdBytes: Buffer.from(init.e2e.keyId, 'hex') }
  : undefined;
const idOf = (b: Buffer) =>
  e2e ? e2eChunkId(e2e, b).id.toString('hex') : createHash('sha256').update(b).digest('hex');
const zeros = Buffer.alloc(4 * 1024 * 1024);

const fh = await open(init.path, 'r');
const reader = new SequentialReader(
  async (buf, offset) => (await fh.read(buf, 0, buf.length, offset)).bytesRead,
  init.size,
);

function isZero(b: Buffer): boolean {
  for (let at = 0; at < b.length; at += zeros.length) {
    const end = Math.min(b.length, at + zeros.length);
    if (b.compare(zeros, 0, end - at, at, end) !== 0) return false;
  }
  return true;
}

// Batches are answered strictly in the order they arrive: the reader only moves forward.
let chain: Promise<void> = Promise.resolve();
port.on('message', (msg: ScanRequest) => {
  chain = chain.then(async () => {
    try {
      const entries = Buffer.from(msg.entries);
      const count = entries.length / MANIFEST_ENTRY_BYTES;
      const flags = new Uint8Array(count);
      for (let i = 0; i < count; i++) {
        const at = i * MANIFEST_ENTRY_BYTES;
        const id = entries.toString('hex', at, at + 32);
        const current = await reader.take(entries.readUInt32BE(at + 32));
        flags[i] = (zeroIds.has(id) ? isZero(current) : idOf(current) === id) ? 1 : 0;
      }
      port.postMessage({ t: 'matches', flags: flags.buffer } satisfies ScanReply, [flags.buffer]);
    } catch (err) {
      port.postMessage({ t: 'error', message: (err as Error).message } satisfies ScanReply);
    }
  });
});
