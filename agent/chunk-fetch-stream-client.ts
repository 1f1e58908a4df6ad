import type { Duplex } from 'node:stream';
import {
  ENCODING_CODE,
  FETCH_FRAME_HEADER_BYTES,
  FetchFrameKind,
  type FrameHeader,
  FrameSplitter,
  MAX_ERROR_FRAME_BYTES,
  type StreamEncoding,
  writeFrameHeader,
} from '../common/chunk-stream.js';
import { readFramesDirectly } from '../common/direct-reads.js';
import { DiskvaultError } from '../common/errors.js';
import { zstdBound } from '../common/limits.js';
import { sealedChunkBound } from '../repo-engine/sealed-chunk.js';
import type { BufferAllocator } from '../storage-adapters/adapter.js';
import { ChunkStreamBroken, errorOfFrame } from './chunk-stream-client.js';
import type { RateLimiter } from './rate-limit.js';

export interface FetchedPayload {
  encoding: StreamEncoding;
  /** As stored, not checked against the id: decompress within `rawLength` and hash before use. */
  payload: Buffer;
  rawLength: number;
}

interface Request {
  id: Buffer;
  maxRaw: number;
  alloc: BufferAllocator | undefined;
  resolve(p: FetchedPayload): void;
  reject(err: Error): void;
}

const ENCODINGS: Record<number, StreamEncoding> = {
  [ENCODING_CODE.raw]: 'raw',
  [ENCODING_CODE.zstd]: 'zstd',
  [ENCODING_CODE.sealed]: 'sealed',
};

/**
 * Requests written to the socket and not yet answered, at most; more wait here. The server reads ahead no
 * further than its own bound, so this only keeps the agent's side small and fair.
 */
const OUTSTANDING = 64;

/**
 * The most a paced stream reads at once: it pays for each read once the bytes are in, so a larger read would
 * let more through before the limiter makes it wait (node's own socket reads are 64 KiB).
 */
export const PACED_READ_BYTES = 64 * 1024;

/**
 * A stream with fetches unanswered that receives nothing for this long is taken for lost (a server or a
 * link that stalled without closing) and closed, so its fetches are asked for again: the server's own
 * idle timeout is as long, and a chunk is read from storage in far less.
 */
export const FETCH_STALL_MS = 120_000;

/**
 * The agent's end of the fetch stream (common/chunk-stream.ts): chunk downloads over one upgraded
 * connection. `fetch` resolves with the payload exactly as `GET /v1/chunks/:id` would give it (read into a
 * buffer from the caller's allocator, bounded by the raw length asked for), or rejects with the error that
 * GET would have answered. When the connection breaks, every unanswered fetch rejects with
 * ChunkStreamBroken, so the caller may ask again another way.
 */
export class ChunkFetchStream {
  /** Per id, the requests written and not yet answered, oldest first (the same id may be asked twice). */
  private readonly waiting = new Map<string, Request[]>();
  private readonly unsent: Request[] = [];
  private outstanding = 0;
  /** The request whose CHUNK payload is being read. */
  private receiving: Request | undefined;
  private broken: Error | undefined;
  private readonly splitter: FrameSplitter;
  /** Whether the socket reads each chunk straight into the buffer it goes to (common/direct-reads.ts). */
  readonly readsDirectly: boolean;

  /**
   * `limiter` (a download rate limit) is paid for every piece received: while it makes us wait the socket is
   * paused, its buffer fills and TCP slows the server down, as a paced per-chunk response does.
   */
  constructor(
    private readonly socket: Duplex,
    head: Buffer,
    stallMs = FETCH_STALL_MS,
    limiter?: RateLimiter | null,
  ) {
    this.splitter = new FrameSplitter(
      (h) => this.check(h),
      (length) => this.receiving?.alloc?.(length) ?? Buffer.allocUnsafe(length),
      (h, payload) => this.onFrame(h, payload),
      FETCH_FRAME_HEADER_BYTES,
    );
    // A limiter that makes us wait pauses the socket until the bytes are paid for. A TLS socket may hand over
    // more pieces after the pause (the rest of what it had decrypted): each is paid for, and reading resumes
    // only once the last of them is (the limiter serves its takers in order).
    let lastDebt: Promise<void> | undefined;
    const pay = (n: number) => {
      const paid = limiter?.take(n);
      if (!paid) return lastDebt === undefined;
      lastDebt = paid;
      void paid.then(() => {
        if (lastDebt !== paid) return;
        lastDebt = undefined;
        socket.resume();
      });
      return false;
    };
    const malformed = (err: unknown) => {
      // A chunk refused on sight fails its own fetch; the stream, now mid-frame, is of no further use.
      const refused = this.receiving;
      this.receiving = undefined;
      if (refused && err instanceof DiskvaultError) refused.reject(err);
      else if (refused) this.unsent.unshift(refused);
      this.breakOff(
        new ChunkStreamBroken(`the server's fetch stream is malformed: ${(err as Error).message}`),
      );
    };
    const onData = (piece: Buffer) => {
      const paid = pay(piece.length);
      try {
        this.splitter.push(piece);
      } catch (err) {
        malformed(err);
      }
      if (!paid) socket.pause();
    };
    socket.on('error', (err) => this.breakOff(new ChunkStreamBroken(`fetch stream failed: ${err.message}`)));
    socket.on('close', () => this.breakOff(new ChunkStreamBroken('the server closed the fetch stream')));
    const timed = socket as Duplex & { setTimeout?(ms: number, cb: () => void): void };
    timed.setTimeout?.(stallMs, () => {
      if (this.pending > 0 || this.receiving)
        this.breakOff(new ChunkStreamBroken(`the fetch stream received nothing for ${stallMs / 1000} s`));
    });
    if (head.length > 0) onData(head);
    this.readsDirectly = readFramesDirectly(
      socket,
      this.splitter,
      pay,
      malformed,
      limiter ? PACED_READ_BYTES : undefined,
    );
    if (!this.readsDirectly) socket.on('data', onData);
  }

  /** Whether the stream can still take requests. */
  get usable(): boolean {
    return this.broken === undefined;
  }

  /** Fetches asked and not yet answered (written or waiting to be). */
  get pending(): number {
    return this.outstanding + this.unsent.length;
  }

  /** One chunk's stored payload; `maxRaw` is the manifest's length for it, which bounds what is read. */
  fetch(id: string, maxRaw: number, alloc?: BufferAllocator): Promise<FetchedPayload> {
    if (this.broken) return Promise.reject(this.broken);
    const idBytes = Buffer.from(id, 'hex');
    if (idBytes.length !== 32) return Promise.reject(new Error(`chunk id ${id} is not 32 bytes of hex`));
    if (!Number.isSafeInteger(maxRaw) || maxRaw < 1 || maxRaw > 0xffffffff)
      return Promise.reject(new Error(`chunk ${id}: no valid length to ask for (${maxRaw})`));
    return new Promise<FetchedPayload>((resolve, reject) => {
      this.unsent.push({ id: idBytes, maxRaw, alloc, resolve, reject });
      this.sendSome();
    });
  }

  /** Tells the server nothing more follows (call once nothing is pending) and closes our side. */
  end(): void {
    if (this.broken) return;
    this.broken = new ChunkStreamBroken('the fetch stream has ended');
    this.socket.end(
      writeFrameHeader(Buffer.allocUnsafe(FETCH_FRAME_HEADER_BYTES), FetchFrameKind.End, 0, 0, undefined, 0),
    );
    this.rejectAll(this.broken);
    // Every answer is in: nothing the server still sends matters, nor may its DONE and close keep the
    // process alive.
    (this.socket as Duplex & { unref?(): void }).unref?.();
    setTimeout(() => this.socket.destroy(), 2_000).unref();
  }

  /** Closes the connection at once; unanswered fetches reject with `reason`. */
  destroy(reason: Error = new ChunkStreamBroken('the fetch stream was closed by the agent')): void {
    this.breakOff(reason);
  }

  private sendSome(): void {
    if (this.unsent.length === 0 || this.outstanding >= OUTSTANDING) return;
    this.socket.cork();
    while (this.unsent.length > 0 && this.outstanding < OUTSTANDING) {
      const r = this.unsent.shift()!;
      const key = r.id.toString('hex');
      const list = this.waiting.get(key);
      if (list) list.push(r);
      else this.waiting.set(key, [r]);
      this.outstanding++;
      this.socket.write(
        writeFrameHeader(
          Buffer.allocUnsafe(FETCH_FRAME_HEADER_BYTES),
          FetchFrameKind.Request,
          0,
          0,
          r.id,
          r.maxRaw,
        ),
      );
    }
    this.socket.uncork();
  }

  /** The request an answer for `id` settles: the oldest one asked. */
  private take(id: Buffer): Request | undefined {
    const key = id.toString('hex');
    const list = this.waiting.get(key);
    const r = list?.shift();
    if (list && list.length === 0) this.waiting.delete(key);
    if (r) this.outstanding--;
    return r;
  }

  /** Checks a frame before its payload is read: a chunk is read only within what its request allows. */
  private check(h: FrameHeader): void {
    if (h.kind === FetchFrameKind.Done) {
      if (h.length !== 0) throw new Error('a DONE frame with a payload');
      return;
    }
    if (h.kind === FetchFrameKind.Error) {
      if (h.length > MAX_ERROR_FRAME_BYTES) throw new Error(`an error frame of ${h.length} bytes`);
      return;
    }
    if (h.kind !== FetchFrameKind.Chunk) throw new Error(`unknown frame kind ${h.kind}`);
    const id = h.id.toString('hex');
    const encoding = ENCODINGS[h.flags];
    if (!encoding) throw new Error(`chunk ${id}: unknown encoding ${h.flags}`);
    const r = this.take(h.id);
    if (!r) throw new Error(`the server sent chunk ${id}, which was not asked for`);
    this.receiving = r;
    // The same bounds as a GET's, before one byte of the payload is read.
    if (h.rawLength < 1 || h.rawLength > r.maxRaw)
      throw new DiskvaultError(
        'Corrupt',
        `chunk ${id}: the server announced ${h.rawLength} raw bytes, the snapshot says at most ${r.maxRaw}`,
        { chunk: id },
      );
    const cap =
      encoding === 'zstd'
        ? zstdBound(h.rawLength)
        : encoding === 'sealed'
          ? sealedChunkBound(r.maxRaw)
          : h.rawLength;
    if (h.length < 1 || h.length > cap)
      throw new DiskvaultError(
        'Corrupt',
        `chunk ${id}: ${h.length} bytes of ${encoding} payload exceed ${cap}`,
        {
          chunk: id,
        },
      );
  }

  private onFrame(h: FrameHeader, payload: Buffer): void {
    if (h.kind === FetchFrameKind.Done) return;
    if (h.kind === FetchFrameKind.Error) {
      const error = errorOfFrame(payload);
      const r = h.id.some((b) => b !== 0) ? this.take(h.id) : undefined;
      // An error about no chunk in particular (the stream itself refused) ends the stream for every fetch.
      if (!r) this.breakOff(error);
      else {
        r.reject(error);
        this.sendSome();
      }
      return;
    }
    const r = this.receiving!;
    this.receiving = undefined;
    r.resolve({ encoding: ENCODINGS[h.flags], payload, rawLength: h.rawLength });
    this.sendSome();
  }

  private rejectAll(err: Error): void {
    const all = [
      ...(this.receiving ? [this.receiving] : []),
      ...this.unsent,
      ...[...this.waiting.values()].flat(),
    ];
    this.receiving = undefined;
    this.unsent.length = 0;
    this.waiting.clear();
    this.outstanding = 0;
    for (const r of all) r.reject(err);
  }

  private breakOff(err: Error): void {
    this.broken ??= err;
    this.splitter.stop();
    this.rejectAll(this.broken);
    this.socket.destroy();
  }
}
