import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import {
  CHUNK_FETCH_PROTOCOL,
  ENCODING_CODE,
  FETCH_FRAME_HEADER_BYTES,
  FetchFrameKind,
  FrameError,
  type FrameHeader,
  FrameSplitter,
  writeFrameHeader,
} from '../common/chunk-stream.js';
import { DiskvaultError, InvalidInputError, isDiskvaultError, NotFoundError } from '../common/errors.js';
import type { ChunkLease } from '../repo-engine/types.js';
import { authenticate, type Principal, tenantScope } from './auth.js';
import type { ApiContext } from './context.js';
import { errorResponse } from './errors.js';

export const FETCH_STREAM_PATH = /^\/v1\/chunk-fetch-stream(?:\?.*)?$/;

/**
 * Chunks a stream reads or writes at once: each holds one lent payload until the kernel has taken its last
 * byte, so this bounds the memory of a connection, and a socket that stops draining stops the reads.
 */
const IN_FLIGHT = 12;

/**
 * Requests waiting for a place, past which the socket is paused (TCP then holds the agent back). One read
 * from the socket may bring more than this (each request is 44 bytes): they wait as small entries.
 */
const QUEUED = 64;

/** How often the token is checked again while a stream serves: a revoked token stops being answered. */
const REAUTH_MS = 1_000;

/** Checks the upgrade request as `GET /v1/chunks/:id` checks each request; returns who asks. */
export function openFetchStream(req: IncomingMessage, ctx: ApiContext): Principal {
  if (req.method !== 'GET') throw new NotFoundError('no such route');
  if (ctx.chunkFetchStream === false) throw new NotFoundError('no such route');
  if ((req.headers.upgrade ?? '').toLowerCase() !== CHUNK_FETCH_PROTOCOL)
    throw new InvalidInputError(`this route upgrades to ${CHUNK_FETCH_PROTOCOL} only`);
  return authenticate(req, ctx.tokens);
}

/**
 * Serves one fetch stream (common/chunk-stream.ts): each REQUEST is answered with the chunk's stored
 * payload, lent by the repository as for `GET /v1/chunks/:id` to an agent that accepts zstd (the agent
 * decompresses within the raw length and checks SHA-256 itself), or with the error that GET would answer,
 * chunk by chunk; the stream stays open across per-chunk errors.
 */
export function serveFetchStream(
  socket: Duplex,
  head: Buffer,
  req: IncomingMessage,
  principal: Principal,
  ctx: ApiContext,
): void {
  const { repo } = ctx;
  const started = process.hrtime.bigint();
  const authorization = req.headers.authorization;
  let tenant = tenantScope(principal);
  let checkedAt = Date.now();
  const queue: { id: Buffer; maxRaw: number }[] = [];
  /** Payloads lent and not yet wholly with the kernel: released on close if their write never finished. */
  const lent = new Set<ChunkLease>();
  let inFlight = 0;
  let chunks = 0;
  let errors = 0;
  let bytes = 0;
  let ended = false;
  let closed = false;
  let paused = false;
  let outcome = 'closed by the agent';

  const header = (kind: number, flags: number, length: number, id?: Buffer, rawLength = 0) =>
    writeFrameHeader(Buffer.allocUnsafe(FETCH_FRAME_HEADER_BYTES), kind, flags, length, id, rawLength);

  /** `written` runs once the kernel holds the frame (or the socket is gone), as for a chunk. */
  const sendError = (id: Buffer | undefined, err: unknown, written?: () => void) => {
    const { status, body, internal } = errorResponse(err);
    if (internal)
      ctx.log(JSON.stringify({ level: 'error', msg: 'chunk fetch stream read failed', error: String(err) }));
    const json = Buffer.from(JSON.stringify({ status, ...body }));
    if (closed) {
      written?.();
      return;
    }
    socket.cork();
    socket.write(header(FetchFrameKind.Error, 0, json.length, id));
    socket.write(json, written && (() => written()));
    socket.uncork();
  };

  /** The token as GET would see it now: revoked, it is refused like any request. */
  const currentTenant = (): string | undefined => {
    if (Date.now() - checkedAt >= REAUTH_MS) {
      tenant = tenantScope(authenticate({ headers: { authorization } } as IncomingMessage, ctx.tokens));
      checkedAt = Date.now();
    }
    return tenant;
  };

  const finishIfIdle = () => {
    if (closed || inFlight > 0 || queue.length > 0 || !ended) return;
    outcome = 'done';
    socket.write(header(FetchFrameKind.Done, 0, 0));
    socket.end();
    setTimeout(() => socket.destroy(), 2_000).unref();
  };

  const serve = async ({ id, maxRaw }: { id: Buffer; maxRaw: number }) => {
    const hex = id.toString('hex');
    let chunk: ChunkLease | undefined;
    try {
      const t = currentTenant();
      // Same answer for "absent" and "another tenant's", as GET gives: a tenant learns nothing of others.
      if (t !== undefined && !repo.chunksReadableBy(t, [hex]).includes(hex))
        throw new NotFoundError(`chunk ${hex} not found`);
      try {
        chunk = await repo.leaseStoredChunkUnverified(hex);
      } catch (err) {
        if (isDiskvaultError(err) && err.code === 'NotFound')
          throw new NotFoundError(`chunk ${hex} not found`);
        throw err;
      }
      // The agent would refuse it on sight (the manifest promises fewer bytes): say so without sending it.
      if (chunk.rawLength > maxRaw) {
        const lease = chunk;
        chunk = undefined;
        lease.release(true);
        throw new DiskvaultError(
          'Corrupt',
          `chunk ${hex} holds ${lease.rawLength} raw bytes, more than the ${maxRaw} asked for`,
          { chunk: hex },
        );
      }
    } catch (err) {
      errors++;
      // An answer waiting in the socket holds its place like a chunk: errors cannot pile up unread either.
      sendError(id, err, () => {
        inFlight--;
        pump();
      });
      return;
    }
    if (closed || !chunk) {
      chunk?.release(false);
      inFlight--;
      return;
    }
    const lease = chunk;
    lent.add(lease);
    chunks++;
    ctx.metrics.chunksFetchStreamed++;
    bytes += lease.payload.length;
    socket.cork();
    socket.write(
      header(FetchFrameKind.Chunk, ENCODING_CODE[lease.encoding], lease.payload.length, id, lease.rawLength),
    );
    // The callback comes once the kernel holds every byte (or with an error once the socket is gone): only
    // then may the payload's memory serve another read.
    socket.write(lease.payload, (err) => {
      lent.delete(lease);
      lease.release(!err);
      inFlight--;
      pump();
    });
    socket.uncork();
  };

  /** Starts queued requests while places are free, and reads more requests once the queue has room. */
  function pump(): void {
    while (!closed && inFlight < IN_FLIGHT && queue.length > 0) {
      inFlight++;
      void serve(queue.shift()!);
    }
    if (paused && !closed && queue.length < QUEUED) {
      paused = false;
      socket.resume();
    }
    finishIfIdle();
  }

  const refuseStream = (err: unknown) => {
    outcome = `refused: ${errorResponse(err).body.code}`;
    splitter.stop();
    sendError(undefined, err);
    socket.end();
    setTimeout(() => socket.destroy(), 2_000).unref();
  };

  const splitter = new FrameSplitter(
    (h: FrameHeader) => {
      if (ended) throw new InvalidInputError('a frame after END');
      if (h.kind !== FetchFrameKind.Request && h.kind !== FetchFrameKind.End)
        throw new InvalidInputError(`unknown frame kind ${h.kind}`);
      if (h.length !== 0 || h.flags !== 0) throw new InvalidInputError('a request frame with a payload');
      if (h.kind === FetchFrameKind.Request && h.rawLength === 0)
        throw new InvalidInputError('a request without the raw length it accepts');
    },
    () => Buffer.alloc(0),
    (h) => {
      if (h.kind === FetchFrameKind.End) ended = true;
      else {
        queue.push({ id: h.id, maxRaw: h.rawLength });
        if (queue.length >= QUEUED && !paused) {
          paused = true;
          socket.pause();
        }
      }
      pump();
    },
    FETCH_FRAME_HEADER_BYTES,
  );

  const onData = (piece: Buffer) => {
    try {
      splitter.push(piece);
    } catch (err) {
      refuseStream(
        err instanceof FrameError ? new InvalidInputError(`chunk fetch stream: ${err.message}`) : err,
      );
    }
  };
  socket.on('data', onData);
  // An agent that closes its side without END wants nothing more.
  socket.on('end', () => {
    if (!ended) socket.destroy();
  });
  socket.on('error', () => socket.destroy());
  socket.once('close', () => {
    closed = true;
    splitter.stop();
    queue.length = 0;
    for (const lease of lent) lease.release(false);
    lent.clear();
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    ctx.log(
      JSON.stringify({
        time: new Date().toISOString(),
        msg: 'chunk fetch stream',
        outcome,
        chunks,
        errors,
        bytesOut: bytes,
        ms: Math.round(ms),
      }),
    );
  });
  if (head.length > 0) onData(head);
}
