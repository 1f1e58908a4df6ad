import type { Server as HttpServer, IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import {
  CHUNK_FETCH_PROTOCOL,
  CHUNK_STREAM_PROTOCOL,
  ENCODING_CODE,
  FRAME_HEADER_BYTES,
  FrameError,
  type FrameHeader,
  FrameKind,
  FrameSplitter,
  writeFrameHeader,
} from '../common/chunk-stream.js';
import { readFramesDirectly } from '../common/direct-reads.js';
import { InvalidInputError, NotFoundError } from '../common/errors.js';
import { zstdBound } from '../common/limits.js';
import { BufferRecycler } from '../repo-engine/buffer-recycler.js';
import { sealedChunkBound } from '../repo-engine/sealed-chunk.js';
import { authenticate, type Principal, requireWriter } from './auth.js';
import { FETCH_STREAM_PATH, openFetchStream, serveFetchStream } from './chunk-fetch-stream.js';
import { storeUploadedChunk } from './chunk-upload.js';
import type { ApiContext } from './context.js';
import { errorResponse, tooLarge } from './errors.js';
import { checkSessionId } from './validation.js';

const STREAM_PATH = /^\/v1\/sessions\/([^/?]+)\/chunk-stream(?:\?.*)?$/;

/**
 * Chunks a stream has received and not yet answered, at most: past this the socket is paused (TCP then
 * holds the agent back), so a fast agent cannot make the server hold more than this many chunks at once.
 */
const IN_FLIGHT = 8;

const streamsOf = new WeakMap<HttpServer, Set<Duplex>>();

/**
 * Serves the chunk stream (common/chunk-stream.ts) on `http`: the agent's bulk upload path, one connection
 * per backup session. Each chunk goes through the same storeUploadedChunk as `PUT /v1/chunks/:id`, and the
 * same errors come back (as ERROR frames carrying the body the PUT route would have answered).
 */
export function attachChunkStream(http: HttpServer, ctx: ApiContext, idleTimeoutMs: number): void {
  const streams = new Set<Duplex>();
  streamsOf.set(http, streams);
  // Stream payloads are read into recycled buffers: nothing keeps one once its chunk is stored.
  const bodies = new BufferRecycler(32 * 1024 * 1024);
  /**
   * Switches an accepted upgrade to `protocol`; the socket is tracked until it closes, and cut once silent
   * for `idleTimeoutMs` (the server's own idle timeout does not cover an upgraded socket).
   */
  const accept = (socket: Duplex, protocol: string) => {
    streams.add(socket);
    socket.once('close', () => streams.delete(socket));
    if ('setTimeout' in socket && typeof socket.setTimeout === 'function')
      (socket as unknown as { setTimeout(ms: number, cb: () => void): void }).setTimeout(idleTimeoutMs, () =>
        socket.destroy(),
      );
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nupgrade: ${protocol}\r\nconnection: Upgrade\r\n\r\n`);
  };
  http.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    if (FETCH_STREAM_PATH.test(req.url ?? '')) {
      let principal: Principal;
      try {
        principal = openFetchStream(req, ctx);
      } catch (err) {
        refuse(socket, err, ctx);
        return;
      }
      accept(socket, CHUNK_FETCH_PROTOCOL);
      serveFetchStream(socket, head, req, principal, ctx);
      return;
    }
    let sid: string;
    try {
      sid = openStream(req, ctx);
    } catch (err) {
      refuse(socket, err, ctx);
      return;
    }
    accept(socket, CHUNK_STREAM_PROTOCOL);
    serveStream(socket, head, sid, String(req.headers.authorization ?? ''), ctx, bodies);
  });
}

/** Cuts every open chunk stream (uploads and fetches) of `http` (the server is closing and its grace time is over). */
export function destroyChunkStreams(http: HttpServer): void {
  for (const s of streamsOf.get(http) ?? []) s.destroy();
}

/** How stale the stream's view of its token may grow (as the fetch stream's). */
const REAUTH_MS = 1_000;

/** Checks the upgrade request as the PUT route checks each request; returns the session id. */
function openStream(req: IncomingMessage, ctx: ApiContext): string {
  const m = STREAM_PATH.exec(req.url ?? '');
  if (!m || req.method !== 'GET' || ctx.chunkStream === false) throw new NotFoundError('no such route');
  if ((req.headers.upgrade ?? '').toLowerCase() !== CHUNK_STREAM_PROTOCOL)
    throw new InvalidInputError(`this route upgrades to ${CHUNK_STREAM_PROTOCOL} only`);
  const p = authenticate(req, ctx.tokens);
  requireWriter(p);
  // Session ids are plain hex: the path is checked as sent (a malformed escape such as %zz is a 400, not a 500).
  const sid = checkSessionId(m[1]);
  ctx.sessions.require(sid, p);
  return sid;
}

/** Answers a refused upgrade as any other refused request: status and {code, message}, then closes. */
function refuse(socket: Duplex, err: unknown, ctx: ApiContext): void {
  const { status, body, internal } = errorResponse(err);
  if (internal) ctx.log(JSON.stringify({ level: 'error', msg: 'chunk stream refused', error: String(err) }));
  const text = JSON.stringify(body);
  socket.end(
    `HTTP/1.1 ${status} ${status === 404 ? 'Not Found' : 'Error'}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(text)}\r\nconnection: close\r\n\r\n${text}`,
  );
  setTimeout(() => socket.destroy(), 2_000).unref();
}

function serveStream(
  socket: Duplex,
  head: Buffer,
  sid: string,
  authorization: string,
  ctx: ApiContext,
  bodies: BufferRecycler,
): void {
  const started = process.hrtime.bigint();
  let authorizedAt = Date.now();
  /**
   * The token as a PUT would see it now, checked again at most every REAUTH_MS: a token revoked while its
   * stream is open stops it as it would stop the next request (a stream lives as long as a backup).
   */
  const checkToken = () => {
    if (Date.now() - authorizedAt < REAUTH_MS) return;
    requireWriter(authenticate({ headers: { authorization } } as IncomingMessage, ctx.tokens));
    authorizedAt = Date.now();
  };
  const maxRaw = ctx.repo.chunker.max;
  let inFlight = 0;
  let chunks = 0;
  let bytes = 0;
  /** Set by the first refused chunk or broken frame: nothing more is read, what is in flight is answered. */
  let failed = false;
  let ended = false;
  let closed = false;
  let outcome = 'closed by the agent';

  const send = (frame: Buffer, payload?: Buffer) => {
    if (closed) return;
    if (payload) {
      socket.cork();
      socket.write(frame);
      socket.write(payload);
      socket.uncork();
    } else socket.write(frame);
  };
  const sendError = (id: Buffer | undefined, err: unknown) => {
    const { status, body, internal } = errorResponse(err);
    if (internal)
      ctx.log(JSON.stringify({ level: 'error', msg: 'chunk stream upload failed', error: String(err) }));
    const json = Buffer.from(JSON.stringify({ status, ...body }));
    send(writeFrameHeader(Buffer.allocUnsafe(FRAME_HEADER_BYTES), FrameKind.Error, 0, json.length, id), json);
  };
  /** The agent has closed its side (after DONE, or it died): nothing more will arrive. */
  let agentGone = false;
  const finishIfIdle = () => {
    if (inFlight > 0 || closed) return;
    // Sockets of this server stay half-open when the peer ends: close ours once every chunk is answered.
    if (agentGone) {
      socket.destroy();
      return;
    }
    if (ended && !failed) {
      outcome = 'done';
      send(writeFrameHeader(Buffer.allocUnsafe(FRAME_HEADER_BYTES), FrameKind.Done, 0, 0));
    }
    if (ended || failed) {
      socket.end();
      setTimeout(() => socket.destroy(), 2_000).unref();
    }
  };
  const fail = (id: Buffer | undefined, err: unknown) => {
    if (failed) return;
    failed = true;
    outcome = `refused: ${errorResponse(err).body.code}`;
    splitter.stop();
    sendError(id, err);
    socket.resume();
    finishIfIdle();
  };

  const store = async (h: FrameHeader, payload: Buffer) => {
    const id = h.id.toString('hex');
    const encoding =
      h.flags === ENCODING_CODE.sealed ? 'sealed' : h.flags === ENCODING_CODE.zstd ? 'zstd' : 'raw';
    try {
      if (closed || failed) return;
      checkToken();
      const { stored } = await storeUploadedChunk(ctx, sid, id, payload, encoding);
      chunks++;
      bytes += payload.length;
      send(writeFrameHeader(Buffer.allocUnsafe(FRAME_HEADER_BYTES), FrameKind.Ack, stored ? 1 : 0, 0, h.id));
    } catch (err) {
      fail(h.id, err);
    } finally {
      bodies.giveBack(payload);
      inFlight--;
      if (inFlight < IN_FLIGHT && !failed) socket.resume();
      finishIfIdle();
    }
  };

  const splitter = new FrameSplitter(
    (h) => {
      if (ended) throw new InvalidInputError('a frame after END');
      if (h.kind === FrameKind.End) {
        if (h.length !== 0 || h.flags !== 0) throw new InvalidInputError('an END frame with a payload');
        return;
      }
      if (h.kind !== FrameKind.Chunk) throw new InvalidInputError(`unknown frame kind ${h.kind}`);
      if (h.flags !== ENCODING_CODE.raw && h.flags !== ENCODING_CODE.zstd && h.flags !== ENCODING_CODE.sealed)
        throw new InvalidInputError(`unknown chunk encoding ${h.flags} (use 0 raw, 1 zstd or 2 sealed)`);
      // The same caps as the PUT route's Content-Length check, before one byte of the payload is read.
      const cap =
        h.flags === ENCODING_CODE.sealed
          ? sealedChunkBound(maxRaw)
          : h.flags === ENCODING_CODE.zstd
            ? zstdBound(maxRaw)
            : maxRaw;
      if (h.length > cap) throw tooLarge(`chunk of ${h.length} bytes exceeds the limit of ${cap} bytes`);
    },
    (length) => bodies.takeBuffer(length),
    (h, payload) => {
      if (h.kind === FrameKind.End) {
        ended = true;
        finishIfIdle();
        return;
      }
      inFlight++;
      if (inFlight >= IN_FLIGHT) socket.pause();
      void store(h, payload);
    },
  );

  const malformed = (err: unknown) =>
    fail(undefined, err instanceof FrameError ? new InvalidInputError(`chunk stream: ${err.message}`) : err);
  const onData = (piece: Buffer) => {
    try {
      splitter.push(piece);
    } catch (err) {
      malformed(err);
    }
  };
  if (head.length > 0) onData(head);
  const direct = readFramesDirectly(socket, splitter, () => true, malformed);
  if (!direct) socket.on('data', onData);
  socket.on('end', () => {
    agentGone = true;
    splitter.stop();
    finishIfIdle();
  });
  socket.on('error', () => socket.destroy());
  socket.once('close', () => {
    closed = true;
    splitter.stop();
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    ctx.log(
      JSON.stringify({
        time: new Date().toISOString(),
        msg: 'chunk stream',
        outcome: ended || failed || !splitter.midFrame ? outcome : 'cut mid-frame',
        chunks,
        bytesIn: bytes,
        reads: direct ? 'direct' : 'copied',
        ms: Math.round(ms),
      }),
    );
  });
}
