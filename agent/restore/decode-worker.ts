import { parentPort } from 'node:worker_threads';
import { isDiskvaultError } from '../../storage-adapters/errors.js';
import { decodeChunk } from './chunk-decoder.js';

/** Decompresses and hash-checks chunks for decode-pool.ts, so the main thread only moves bytes. */
export interface DecodeJob {
  seq: number;
  id: string;
  length: number;
  encoding: 'raw' | 'zstd';
  payload: ArrayBuffer;
  payloadLength: number;
}

export type DecodeReply =
  | { seq: number; raw: ArrayBuffer; length: number }
  | { seq: number; error: { code?: string; message: string; details?: Record<string, unknown> } };

const port = parentPort;
if (!port) throw new Error('decode-worker must run as a worker thread');

port.on('message', (job: DecodeJob) => {
  try {
    const raw = decodeChunk(
      { encoding: job.encoding, payload: Buffer.from(job.payload, 0, job.payloadLength) },
      job.id,
      job.length,
    );
    // A decompressed chunk owns its buffer; a raw payload came whole from the main thread. Copy otherwise.
    const whole =
      raw.byteOffset === 0 && raw.byteLength === raw.buffer.byteLength && raw.buffer instanceof ArrayBuffer;
    const ab = whole
      ? (raw.buffer as ArrayBuffer)
      : (Uint8Array.prototype.slice.call(raw).buffer as ArrayBuffer);
    port.postMessage({ seq: job.seq, raw: ab, length: raw.length } satisfies DecodeReply, [ab]);
  } catch (err) {
    const e = err as Error;
    port.postMessage({
      seq: job.seq,
      error: {
        code: isDiskvaultError(err) ? err.code : undefined,
        message: e.message,
        details: isDiskvaultError(err) ? err.details : undefined,
      },
    } satisfies DecodeReply);
  }
});
