import { parentPort, workerData } from 'node:worker_threads';
import { isDiskvaultError } from '../../common/errors.js';
import { type ChunkOpeningKeys, decodeChunk } from './chunk-decoder.js';

/** Decompresses and hash-checks chunks for decode-pool.ts, so the main thread only moves bytes. */
export interface DecodeJob {
  seq: number;
  id: string;
  length: number;
  encoding: 'raw' | 'zstd' | 'sealed';
  payload: ArrayBuffer;
  payloadLength: number;
  /** Where to decompress to, when the pool has a recycled buffer for it. */
  into?: ArrayBuffer;
}

/** `spare`: buffers the job no longer needs (the compressed payload, an unused `into`), for recycling. */
export type DecodeReply =
  | { seq: number; raw: ArrayBuffer; length: number; spare: ArrayBuffer[] }
  | {
      seq: number;
      error: { code?: string; message: string; details?: Record<string, unknown> };
      spare: ArrayBuffer[];
    };

const port = parentPort;
if (!port) throw new Error('decode-worker must run as a worker thread');
/** An end-to-end restore's keys (the pool's `e2e`): every chunk is then sealed and opened with them. */
const e2e = (workerData as { e2e?: ChunkOpeningKeys } | undefined)?.e2e;

port.on('message', (job: DecodeJob) => {
  try {
    const raw = decodeChunk(
      { encoding: job.encoding, payload: Buffer.from(job.payload, 0, job.payloadLength) },
      job.id,
      job.length,
      job.into,
      e2e,
    );
    // The result starts at offset 0 of `into`, of the payload (a raw chunk) or of a buffer of its own; a
    // small allocation may be a slice of Node's shared pool, which must never be transferred.
    const own =
      raw.byteOffset === 0 &&
      (raw.buffer === job.into || raw.buffer === job.payload || raw.byteLength === raw.buffer.byteLength);
    const ab = own ? (raw.buffer as ArrayBuffer) : copyOut(raw);
    const spare = [job.payload, job.into].filter((b): b is ArrayBuffer => b !== undefined && b !== ab);
    port.postMessage({ seq: job.seq, raw: ab, length: raw.length, spare } satisfies DecodeReply, [
      ab,
      ...spare,
    ]);
  } catch (err) {
    const e = err as Error;
    const spare = [job.payload, job.into].filter((b): b is ArrayBuffer => b !== undefined);
    port.postMessage(
      {
        seq: job.seq,
        error: {
          code: isDiskvaultError(err) ? err.code : undefined,
          message: e.message,
          details: isDiskvaultError(err) ? err.details : undefined,
        },
        spare,
      } satisfies DecodeReply,
      spare,
    );
  }
});

function copyOut(buf: Buffer): ArrayBuffer {
  return Uint8Array.prototype.slice.call(buf).buffer as ArrayBuffer;
}
