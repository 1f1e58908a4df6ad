import { createHash } from 'node:crypto';
import { closeSync, openSync, readSync } from 'node:fs';
import { parentPort } from 'node:worker_threads';

/**
 * The whole-image SHA-256, off the main thread. Messages arrive in image order: bytes (transferred, never
 * copied, and transferred back once hashed), a run of zeros, or a range to read back from a file (bytes
 * that were already correct in an in-place target). Every `ackEvery` bytes it reports progress so the
 * sender can bound what is queued here.
 */
export type HashMessage =
  | { t: 'bytes'; buf: ArrayBuffer; length: number }
  | { t: 'zeros'; length: number }
  | { t: 'file'; path: string; offset: number; length: number }
  | { t: 'end' };

export type HashReply =
  | { t: 'ack'; hashed: number }
  /** A 'bytes' buffer, hashed and handed back for reuse. */
  | { t: 'release'; buf: ArrayBuffer }
  | { t: 'digest'; sha256: string }
  | { t: 'error'; message: string };

const port = parentPort;
if (!port) throw new Error('image-hash-worker must run as a worker thread');

const hash = createHash('sha256');
const zeros = Buffer.alloc(4 * 1024 * 1024);
const readBuf = Buffer.allocUnsafe(16 * 1024 * 1024);
const fds = new Map<string, number>();
let hashed = 0;
let sinceAck = 0;

function account(n: number): void {
  hashed += n;
  sinceAck += n;
  if (sinceAck >= 8 * 1024 * 1024) {
    sinceAck = 0;
    port?.postMessage({ t: 'ack', hashed } satisfies HashReply);
  }
}

function hashFile(path: string, offset: number, length: number): void {
  let fd = fds.get(path);
  if (fd === undefined) {
    fd = openSync(path, 'r');
    fds.set(path, fd);
  }
  let done = 0;
  while (done < length) {
    const want = Math.min(readBuf.length, length - done);
    const n = readSync(fd, readBuf, 0, want, offset + done);
    if (n === 0) throw new Error(`${path} ends at ${offset + done}, expected ${offset + length}`);
    hash.update(readBuf.subarray(0, n));
    done += n;
  }
}

port.on('message', (msg: HashMessage) => {
  try {
    switch (msg.t) {
      case 'bytes':
        hash.update(new Uint8Array(msg.buf, 0, msg.length));
        port.postMessage({ t: 'release', buf: msg.buf } satisfies HashReply, [msg.buf]);
        account(msg.length);
        break;
      case 'zeros':
        for (let left = msg.length; left > 0; left -= zeros.length)
          hash.update(zeros.subarray(0, Math.min(left, zeros.length)));
        account(msg.length);
        break;
      case 'file':
        hashFile(msg.path, msg.offset, msg.length);
        account(msg.length);
        break;
      case 'end':
        for (const fd of fds.values()) closeSync(fd);
        fds.clear();
        port.postMessage({ t: 'digest', sha256: hash.digest('hex') } satisfies HashReply);
        break;
    }
  } catch (err) {
    port.postMessage({ t: 'error', message: (err as Error).message } satisfies HashReply);
  }
});
