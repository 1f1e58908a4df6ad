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

/**
 * The fetch stream: a restore's downloads over one upgraded connection instead of one `GET /v1/chunks/<id>`
 * per chunk. The agent asks `GET /v1/chunk-fetch-stream` with `Upgrade: diskvault-fetch/1` (the server
 * names the protocol as `chunkFetchStream` in its snapshot lease answer); after `101 Switching Protocols`
 * the connection carries frames both ways until the agent sends END.
 *
 * Its frames have the header above followed by one more field, so the header is 44 bytes:
 *
 *   bytes 40–43  raw length: in a REQUEST the most raw bytes the agent accepts for the chunk (the
 *                manifest's length), in a CHUNK the chunk's raw length; zero otherwise
 *
 * Agent → server: REQUEST (no payload: the chunk id and the raw length are the whole request) and END.
 * Server → agent: CHUNK (flags: the payload's encoding, 0 raw, 1 zstd, 2 sealed; the payload is exactly the
 * body `GET /v1/chunks/<id>` answers an agent that accepts zstd), ERROR (the JSON error body
 * `{status, code, message}` that GET would have answered, for the chunk named; with a zero id the stream
 * itself is refused and closes) and DONE (after END, every request answered). Answers come in the order
 * chunks are read, not the order they were asked for; the same id asked twice is answered twice.
 */
export const CHUNK_FETCH_PROTOCOL = 'diskvault-fetch/1';
export const FETCH_FRAME_HEADER_BYTES = FRAME_HEADER_BYTES + 4;

export const FetchFrameKind = {
  /** Agent → server. */
  Request: 1,
  End: 2,
  /** Server → agent. */
  Chunk: 1,
  Done: 2,
  Error: 3,
} as const;

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
  /** The raw length field of a fetch stream frame; 0 for a 40-byte header. */
  rawLength: number;
}

/**
 * Writes a header into `out` (at least FRAME_HEADER_BYTES long); `id` is 32 bytes or omitted (zeros). With
 * `rawLength` it is a fetch stream header (FETCH_FRAME_HEADER_BYTES, `out` that long).
 */
export function writeFrameHeader(
  out: Buffer,
  kind: number,
  flags: number,
  length: number,
  id?: Buffer,
  rawLength?: number,
): Buffer {
  out[0] = kind;
  out[1] = flags;
  out[2] = 0;
  out[3] = 0;
  out.writeUInt32LE(length, 4);
  if (id) id.copy(out, 8, 0, ID_FIELD_BYTES);
  else out.fill(0, 8, FRAME_HEADER_BYTES);
  if (rawLength === undefined) return out.subarray(0, FRAME_HEADER_BYTES);
  out.writeUInt32LE(rawLength, FRAME_HEADER_BYTES);
  return out.subarray(0, FETCH_FRAME_HEADER_BYTES);
}

/**
 * Reads a header of `headerBytes` (FRAME_HEADER_BYTES, or FETCH_FRAME_HEADER_BYTES for the fetch stream);
 * a frame whose reserved bytes are not zero is not ours.
 */
export function readFrameHeader(h: Buffer, headerBytes = FRAME_HEADER_BYTES): FrameHeader | undefined {
  if (h.length < headerBytes || h[2] !== 0 || h[3] !== 0) return undefined;
  return {
    kind: h[0],
    flags: h[1],
    length: h.readUInt32LE(4),
    id: h.subarray(8, FRAME_HEADER_BYTES),
    rawLength: headerBytes > FRAME_HEADER_BYTES ? h.readUInt32LE(FRAME_HEADER_BYTES) : 0,
  };
}

/**
 * Splits a byte stream into frames without copying more than once: each header is gathered in a buffer of
 * its own, and each payload straight into the buffer `payloadBuffer` hands out (a recycled one), whatever
 * way the bytes were cut into pieces on the wire. `onFrame` owns the payload it is given.
 */
export class FrameSplitter {
  private readonly header: Buffer;
  private headerAt = 0;
  private current: FrameHeader | undefined;
  private payload: Buffer | undefined;
  private payloadAt = 0;
  private stopped = false;

  constructor(
    /** Checks a header before its payload is read; throws to refuse it (then nothing more is split). */
    private readonly accept: (h: FrameHeader) => void,
    /** Where a payload of `length` bytes goes (`h` is its frame's header, after `accept`). */
    private readonly payloadBuffer: (length: number, h: FrameHeader) => Buffer,
    private readonly onFrame: (h: FrameHeader, payload: Buffer) => void,
    /** FRAME_HEADER_BYTES, or FETCH_FRAME_HEADER_BYTES for the fetch stream. */
    private readonly headerBytes = FRAME_HEADER_BYTES,
  ) {
    this.header = Buffer.alloc(headerBytes);
  }

  /** Bytes in the middle of a frame (a header or payload begun and not finished). */
  get midFrame(): boolean {
    return this.headerAt > 0 || this.current !== undefined;
  }

  /** Ends splitting: later pieces are ignored, and a payload half read is dropped. */
  stop(): void {
    this.stopped = true;
    this.payload = undefined;
  }

  /**
   * Where the stream's next bytes belong: the rest of the header being gathered, or of the payload being
   * read. A socket may read straight into it (direct-reads.ts); after the frame completes the region is no
   * longer the splitter's, so nothing may be written into it once `advance` has been told. Undefined once
   * stopped.
   */
  nextRegion(): Buffer | undefined {
    if (this.stopped) return undefined;
    if (!this.current) return this.header.subarray(this.headerAt);
    return this.payload!.subarray(this.payloadAt);
  }

  /** Takes note that `n` bytes (at most the region's length) were written into `nextRegion()`. */
  advance(n: number): void {
    if (this.stopped) return;
    if (!this.current) {
      this.headerAt += n;
      if (this.headerAt < this.headerBytes) return;
      this.headerAt = 0;
      const h = readFrameHeader(this.header, this.headerBytes);
      if (!h) throw new FrameError('a frame header with nonzero reserved bytes');
      // The id is copied out of the header buffer, which the next frame overwrites.
      const frame = { ...h, id: Buffer.from(h.id) };
      this.accept(frame);
      this.current = frame;
      this.payload = frame.length > 0 ? this.exactPayloadBuffer(frame) : Buffer.alloc(0);
      this.payloadAt = 0;
    } else {
      this.payloadAt += n;
    }
    if (this.payloadAt === this.payload!.length) {
      const frame = this.current;
      const payload = this.payload!;
      this.current = undefined;
      this.payload = undefined;
      this.onFrame(frame, payload);
    }
  }

  /**
   * The buffer a frame's payload is read into, exactly its length: the buffer's end is where the next frame
   * starts, so a longer one would swallow the next header and a shorter one would read payload as a header.
   */
  private exactPayloadBuffer(frame: FrameHeader): Buffer {
    const buffer = this.payloadBuffer(frame.length, frame);
    if (buffer.length < frame.length)
      throw new Error(`a payload buffer of ${buffer.length} bytes for a frame of ${frame.length}`);
    return buffer.length === frame.length ? buffer : buffer.subarray(0, frame.length);
  }

  /** Splits a piece read elsewhere, copying its bytes into each region in turn. */
  push(piece: Buffer): void {
    let at = 0;
    while (at < piece.length) {
      const region = this.nextRegion();
      if (!region) return;
      const n = Math.min(region.length, piece.length - at);
      piece.copy(region, 0, at, at + n);
      at += n;
      this.advance(n);
    }
  }
}

/** A stream that does not follow the framing (not a diskvault peer, or a broken one). */
export class FrameError extends Error {}
