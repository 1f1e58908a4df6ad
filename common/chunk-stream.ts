/**
 * The chunk stream: one long upload per backup session instead of one HTTP request per chunk. The agent
 * asks `GET /v1/sessions/<id>/chunk-stream` with `Upgrade: diskvault-chunks/1`; after `101 Switching
 * Protocols` the connection carries frames both ways until the agent sends END.
 *
 * Every frame starts with the same 40-byte header, integers little-endian:
 *
 *   byte 0     kind
 *   byte 1     agent → server: the payload's encoding (0 raw, 1 zstd, 2 sealed); server → agent: flags
 *   bytes 2–3  zero
 *   bytes 4–7  payload length
 *   bytes 8–39 chunk id (SHA-256 of the raw bytes), or zeros
 *
 * Agent → server: CHUNK (header, then the payload: exactly what `PUT /v1/chunks/<id>` carries as its body)
 * and END (nothing more follows). Server → agent: ACK for each chunk stored or deduplicated (flag 1: the
 * tenant did not hold it before, as `stored` in the PUT answer), ERROR (the payload is the JSON error body
 * `{status, code, message}` the PUT route would have answered, for the chunk named; the server reads no
 * more frames and closes once the chunks already received are answered) and DONE (after END, every chunk
 * answered). Acknowledgements come in the order chunks finish, not the order they were sent.
 */
export const CHUNK_STREAM_PROTOCOL = 'diskvault-chunks/1';
export const FRAME_HEADER_BYTES = 40;
export const ID_FIELD_BYTES = 32;

export const FrameKind = {
  /** Agent → server. */
  Chunk: 1,
  End: 2,
  /** Server → agent. */
  Ack: 1,
  Done: 2,
  Error: 3,
} as const;

export const ENCODING_CODE = { raw: 0, zstd: 1, sealed: 2 } as const;
export type StreamEncoding = keyof typeof ENCODING_CODE;

/** An ERROR frame's payload is small JSON; anything longer is not a diskvault server. */
export const MAX_ERROR_FRAME_BYTES = 64 * 1024;

export interface FrameHeader {
  kind: number;
  /** The encoding code (agent → server) or flags (server → agent). */
  flags: number;
  length: number;
  /** The 32-byte id field, as a view into the header buffer: copy it to keep it. */
  id: Buffer;
}

/** Writes a header into `out` (at least FRAME_HEADER_BYTES long); `id` is 32 bytes or omitted (zeros). */
export function writeFrameHeader(
  out: Buffer,
  kind: number,
  flags: number,
  length: number,
  id?: Buffer,
): Buffer {
  out[0] = kind;
  out[1] = flags;
  out[2] = 0;
  out[3] = 0;
  out.writeUInt32LE(length, 4);
  if (id) id.copy(out, 8, 0, ID_FIELD_BYTES);
  else out.fill(0, 8, FRAME_HEADER_BYTES);
  return out.subarray(0, FRAME_HEADER_BYTES);
}

/** Reads a header; a frame whose reserved bytes are not zero is not ours. */
export function readFrameHeader(h: Buffer): FrameHeader | undefined {
  if (h.length < FRAME_HEADER_BYTES || h[2] !== 0 || h[3] !== 0) return undefined;
  return { kind: h[0], flags: h[1], length: h.readUInt32LE(4), id: h.subarray(8, FRAME_HEADER_BYTES) };
}

/**
 * Splits a byte stream into frames without copying more than once: each header is gathered in a buffer of
 * its own, and each payload straight into the buffer `payloadBuffer` hands out (a recycled one), whatever
 * way the bytes were cut into pieces on the wire. `onFrame` owns the payload it is given.
 */
export class FrameSplitter {
  private readonly header = Buffer.alloc(FRAME_HEADER_BYTES);
  private headerAt = 0;
  private current: FrameHeader | undefined;
  private payload: Buffer | undefined;
  private payloadAt = 0;
  private stopped = false;

  constructor(
    /** Checks a header before its payload is read; throws to refuse it (then nothing more is split). */
    private readonly accept: (h: FrameHeader) => void,
    private readonly payloadBuffer: (length: number) => Buffer,
    private readonly onFrame: (h: FrameHeader, payload: Buffer) => void,
  ) {}

  /** Bytes in the middle of a frame (a header or payload begun and not finished). */
  get midFrame(): boolean {
    return this.headerAt > 0 || this.current !== undefined;
  }

  /** Ends splitting: later pieces are ignored, and a payload half read is dropped. */
  stop(): void {
    this.stopped = true;
    this.payload = undefined;
  }

  push(piece: Buffer): void {
    let at = 0;
    while (at < piece.length && !this.stopped) {
      if (!this.current) {
        const n = Math.min(FRAME_HEADER_BYTES - this.headerAt, piece.length - at);
        piece.copy(this.header, this.headerAt, at, at + n);
        this.headerAt += n;
        at += n;
        if (this.headerAt < FRAME_HEADER_BYTES) return;
        this.headerAt = 0;
        const h = readFrameHeader(this.header);
        if (!h) throw new FrameError('a frame header with nonzero reserved bytes');
        // The id is copied out of the header buffer, which the next frame overwrites.
        const frame = { ...h, id: Buffer.from(h.id) };
        this.accept(frame);
        this.current = frame;
        this.payload = frame.length > 0 ? this.payloadBuffer(frame.length) : Buffer.alloc(0);
        this.payloadAt = 0;
      }
      const payload = this.payload!;
      const n = Math.min(payload.length - this.payloadAt, piece.length - at);
      if (n > 0) piece.copy(payload, this.payloadAt, at, at + n);
      this.payloadAt += n;
      at += n;
      if (this.payloadAt === payload.length) {
        const frame = this.current!;
        this.current = undefined;
        this.payload = undefined;
        this.onFrame(frame, payload);
      }
    }
  }
}

/** A stream that does not follow the framing (not a diskvault peer, or a broken one). */
export class FrameError extends Error {}
