import type { Duplex } from 'node:stream';
import {
  ENCODING_CODE,
  FRAME_HEADER_BYTES,
  type FrameHeader,
  FrameKind,
  FrameSplitter,
  MAX_ERROR_FRAME_BYTES,
  type StreamEncoding,
  writeFrameHeader,
} from '../common/chunk-stream.js';
import { codeForStatus, DiskvaultError, isErrorCode } from '../common/errors.js';

export interface StreamPutResult {
  id: string;
  stored: boolean;
}

interface Waiter {
  resolve(r: StreamPutResult): void;
  reject(err: Error): void;
}

/**
 * The agent's end of the chunk stream (common/chunk-stream.ts): many chunk uploads over one upgraded
 * connection, each answered by an acknowledgement. `put` resolves once the server has stored (or
 * deduplicated) the chunk and rejects with the server's error as the PUT route would have given it; when
 * the connection itself breaks, every unanswered put rejects with `ChunkStreamBroken`, so the caller can
 * send those chunks again another way.
 */
export class ChunkStream {
  private readonly waiting = new Map<string, Waiter[]>();
  private broken: Error | undefined;
  private ending: { resolve(): void; reject(err: Error): void } | undefined;
  private readonly splitter: FrameSplitter;

  constructor(
    private readonly socket: Duplex,
    head: Buffer,
  ) {
    this.splitter = new FrameSplitter(
      (h) => this.check(h),
      (length) => Buffer.allocUnsafe(length),
      (h, payload) => this.onFrame(h, payload),
    );
    socket.on('data', (piece: Buffer) => {
      try {
        this.splitter.push(piece);
      } catch (err) {
        this.breakOff(
          new ChunkStreamBroken(`the server's chunk stream is malformed: ${(err as Error).message}`),
        );
      }
    });
    socket.on('error', (err) => this.breakOff(new ChunkStreamBroken(`chunk stream failed: ${err.message}`)));
    socket.on('close', () => this.breakOff(new ChunkStreamBroken('the server closed the chunk stream')));
    if (head.length > 0) socket.emit('data', head);
  }

  /** Chunks sent and not yet answered. */
  get pending(): number {
    let n = 0;
    for (const w of this.waiting.values()) n += w.length;
    return n;
  }

  /**
   * Sends one chunk. `payload` must stay unchanged until the returned promise settles (it may still be
   * queued on the socket until then).
   */
  put(id: string, payload: Buffer, encoding: StreamEncoding): Promise<StreamPutResult> {
    if (this.broken) return Promise.reject(this.broken);
    if (this.ending) return Promise.reject(new Error('the chunk stream is ending'));
    const idBytes = Buffer.from(id, 'hex');
    if (idBytes.length !== 32) return Promise.reject(new Error(`chunk id ${id} is not 32 bytes of hex`));
    return new Promise<StreamPutResult>((resolve, reject) => {
      const list = this.waiting.get(id);
      if (list) list.push({ resolve, reject });
      else this.waiting.set(id, [{ resolve, reject }]);
      const header = writeFrameHeader(
        Buffer.allocUnsafe(FRAME_HEADER_BYTES),
        FrameKind.Chunk,
        ENCODING_CODE[encoding],
        payload.length,
        idBytes,
      );
      this.socket.cork();
      this.socket.write(header);
      this.socket.write(payload);
      this.socket.uncork();
    });
  }

  /** Tells the server nothing more follows and waits until it has answered every chunk and closed. */
  end(): Promise<void> {
    if (this.broken) return Promise.reject(this.broken);
    return new Promise<void>((resolve, reject) => {
      this.ending = { resolve, reject };
      this.socket.write(writeFrameHeader(Buffer.allocUnsafe(FRAME_HEADER_BYTES), FrameKind.End, 0, 0));
    });
  }

  /** Closes the connection at once; unanswered puts reject with ChunkStreamBroken. */
  destroy(): void {
    this.breakOff(new ChunkStreamBroken('the chunk stream was closed by the agent'));
    this.socket.destroy();
  }

  private check(h: FrameHeader): void {
    if (h.kind === FrameKind.Ack || h.kind === FrameKind.Done) {
      if (h.length !== 0) throw new Error(`a frame of kind ${h.kind} with a payload`);
    } else if (h.kind === FrameKind.Error) {
      if (h.length > MAX_ERROR_FRAME_BYTES) throw new Error(`an error frame of ${h.length} bytes`);
    } else throw new Error(`unknown frame kind ${h.kind}`);
  }

  private onFrame(h: FrameHeader, payload: Buffer): void {
    if (h.kind === FrameKind.Done) {
      if (this.pending > 0) {
        this.breakOff(new ChunkStreamBroken('the server ended the chunk stream with chunks unanswered'));
        return;
      }
      const ending = this.ending;
      this.ending = undefined;
      this.socket.end();
      ending?.resolve();
      return;
    }
    const id = h.id.toString('hex');
    const error = h.kind === FrameKind.Error ? errorOfFrame(payload) : undefined;
    const list = this.waiting.get(id);
    const waiter = list?.shift();
    if (list && list.length === 0) this.waiting.delete(id);
    if (!waiter) {
      // An error about no chunk in particular (a broken frame) ends the stream for every chunk.
      if (error) this.breakOff(error);
      else this.breakOff(new ChunkStreamBroken(`the server acknowledged chunk ${id}, which was not sent`));
      return;
    }
    if (error) waiter.reject(error);
    else waiter.resolve({ id, stored: (h.flags & 1) === 1 });
  }

  private breakOff(err: Error): void {
    if (this.broken) return;
    this.broken = err;
    this.splitter.stop();
    const waiters = [...this.waiting.values()].flat();
    this.waiting.clear();
    for (const w of waiters) w.reject(err);
    const ending = this.ending;
    this.ending = undefined;
    ending?.reject(err);
    this.socket.destroy();
  }
}

/** The connection broke (or the stream is unusable): what was sent and not answered may be sent again. */
export class ChunkStreamBroken extends Error {}

/** An ERROR frame's body, as the DiskvaultError the PUT route's answer would have become. */
export function errorOfFrame(payload: Buffer): DiskvaultError {
  let body: { status?: unknown; code?: unknown; message?: unknown; details?: unknown } = {};
  try {
    body = JSON.parse(payload.toString('utf8'));
  } catch {
    body = {};
  }
  const status = typeof body.status === 'number' ? body.status : 500;
  const code = isErrorCode(body.code) ? body.code : codeForStatus(status);
  const message =
    typeof body.message === 'string' && body.message ? body.message : `server answered ${status}`;
  const details = typeof body.details === 'object' && body.details !== null ? body.details : {};
  return new DiskvaultError(code, message, { status, ...details });
}
