import type { Server as HttpServer, IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Server as TlsServer } from 'node:tls';
import restify, { type Request, type Response, type Server } from 'restify';
import { DiskvaultError } from '../common/errors.js';
import type { RepositoryApi } from '../repo-engine/types.js';
import { attachChunkStream, destroyChunkStreams } from './chunk-stream.js';
import { CommitGate } from './commit-gate.js';
import { type ApiContext, closeIfBodyUnread } from './context.js';
import { errorResponse } from './errors.js';
import { JobRegistry } from './jobs.js';
import { Metrics } from './metrics.js';
import { attachRequestLog } from './request-log.js';
import { registerAdminRoutes } from './routes/admin.js';
import { registerChunkRoutes } from './routes/chunks.js';
import { registerClientDownloadRoutes } from './routes/client-download.js';
import { registerDiskViewRoutes } from './routes/disk-views.js';
import { registerImageRoutes } from './routes/image.js';
import { registerJobListRoute } from './routes/jobs-list.js';
import { registerLeaseRoutes } from './routes/leases.js';
import { registerProtectRoutes } from './routes/protect.js';
import { registerSessionRoutes } from './routes/sessions.js';
import { registerShareRoutes } from './routes/share.js';
import { registerSnapshotRoutes } from './routes/snapshots.js';
import { registerTokenRoutes } from './routes/tokens.js';
import { registerUiRoutes } from './routes/ui.js';
import { registerWhoamiRoute } from './routes/whoami.js';
import { SessionRegistry } from './session-registry.js';
import { TokenStore } from './token-store.js';

export interface ServerOptions {
  repo: RepositoryApi;
  /** Holds tokens.json. */
  dataDir: string;
  host?: string;
  /** 0 picks a free port. */
  port?: number;
  tls?: { cert: Buffer | string; key: Buffer | string };
  /** One line at a time (JSON); default: stderr. */
  log?: (line: string) => void;
  /** The whole request head must arrive within this (slowloris). */
  headersTimeoutMs?: number;
  /** The whole request, body included. Generous: a multi-GB manifest on a slow link. */
  requestTimeoutMs?: number;
  /** A socket with no traffic for this long is closed (a stalled body). */
  idleTimeoutMs?: number;
  maxManifestBytes?: number;
  /** Open upload sessions, and separately snapshot leases, one token may hold. */
  maxSessionsPerToken?: number;
  /** Commits running at once; more wait (see api/commit-gate.ts). Default 2. */
  maxConcurrentCommits?: number;
  /**
   * Commits waiting for a turn before more are refused with 503. A waiting commit costs a socket (its body is
   * not read until its turn), so the default, 1024, lets a whole fleet commit at 02:00 without a refusal.
   */
  maxWaitingCommits?: number;
  /** How long a commit waits for its turn before it is refused with 503. Default 10 min. */
  commitWaitMs?: number;
  /** Offer backups the upload stream (one connection for every upload). Default true. */
  chunkStream?: boolean;
  /** Offer restores the fetch stream (one connection for every download). Default true. */
  chunkFetchStream?: boolean;
}

export const DEFAULT_MAX_SESSIONS_PER_TOKEN = 16;

/** 2 GiB: a 64 TiB image at 1 MiB average chunks is ~2.3 GB of entries, beyond what one agent backs up. */
export const DEFAULT_MAX_MANIFEST_BYTES = 2 * 1024 * 1024 * 1024;

/** A do-nothing logger for restify's internals: our own request log is the only log. */
const silentLogger: Record<string, unknown> = {};
for (const level of ['trace', 'debug', 'info', 'warn', 'error', 'fatal']) silentLogger[level] = () => false;
silentLogger.child = () => silentLogger;

const RESTIFY_ERRORS: Record<string, { code: DiskvaultError['code']; message: string }> = {
  ResourceNotFoundError: { code: 'NotFound', message: 'no such route' },
  InvalidContentError: { code: 'InvalidInput', message: 'invalid request body' },
  UriTooLongError: { code: 'InvalidInput', message: 'URI too long' },
  PayloadTooLargeError: { code: 'TooLarge', message: 'request body too large' },
};

export function createApiServer(opts: ServerOptions): { server: Server; ctx: ApiContext } {
  const log = opts.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const ctx: ApiContext = {
    repo: opts.repo,
    tokens: new TokenStore(opts.dataDir),
    sessions: new SessionRegistry(),
    jobs: new JobRegistry(log),
    metrics: new Metrics(),
    log,
    maxManifestBytes: opts.maxManifestBytes ?? DEFAULT_MAX_MANIFEST_BYTES,
    maxSessionsPerToken: opts.maxSessionsPerToken ?? DEFAULT_MAX_SESSIONS_PER_TOKEN,
    commits: new CommitGate(
      opts.maxConcurrentCommits ?? 2,
      opts.maxWaitingCommits ?? 1024,
      opts.commitWaitMs ?? 600_000,
    ),
    chunkStream: opts.chunkStream ?? true,
    chunkFetchStream: opts.chunkFetchStream ?? true,
  };
  const server = restify.createServer({
    name: 'diskvault',
    log: silentLogger as never,
    handleUncaughtExceptions: false,
    ...(opts.tls ? { certificate: opts.tls.cert, key: opts.tls.key } : {}),
  });

  server.pre((req: Request, res: Response, next: restify.Next) => {
    attachRequestLog(req, res, ctx.metrics, log);
    next();
  });

  registerSessionRoutes(server, ctx);
  registerChunkRoutes(server, ctx);
  registerSnapshotRoutes(server, ctx);
  registerAdminRoutes(server, ctx);
  registerLeaseRoutes(server, ctx);
  registerImageRoutes(server, ctx);
  registerProtectRoutes(server, ctx);
  registerWhoamiRoute(server, ctx);
  registerJobListRoute(server, ctx);
  registerDiskViewRoutes(server, ctx);
  registerTokenRoutes(server, ctx);
  registerUiRoutes(server, ctx);
  registerShareRoutes(server, ctx);
  registerClientDownloadRoutes(server, ctx);

  // Restify's own errors (unknown route, wrong method) get the same {code, message} body as ours.
  server.on(
    'restifyError',
    (req: Request, res: Response, err: Error & { statusCode?: number }, cb: () => void) => {
      const known = RESTIFY_ERRORS[err.name];
      const mapped = errorResponse(known ? new DiskvaultError(known.code, known.message) : err);
      if (mapped.internal)
        log(JSON.stringify({ level: 'error', msg: 'request failed', error: String(err.stack ?? err) }));
      // 405 keeps its status (with the Allow header restify set); its body still follows our shape.
      const notAllowed = err.name === 'MethodNotAllowedError';
      err.statusCode = notAllowed ? 405 : mapped.status;
      const body = notAllowed
        ? { code: 'MethodNotAllowed', message: `${req.method} is not allowed on this route` }
        : mapped.body;
      (err as unknown as { toJSON: () => unknown }).toJSON = () => body;
      res.setHeader('content-type', 'application/json');
      closeIfBodyUnread(req, res);
      cb();
    },
  );

  const http = server.server;
  const headersTimeout = opts.headersTimeoutMs ?? 30_000;
  const requestTimeout = opts.requestTimeoutMs ?? 60 * 60_000;
  http.headersTimeout = headersTimeout;
  http.requestTimeout = requestTimeout;
  http.timeout = opts.idleTimeoutMs ?? 120_000;
  enforceDeadlines(http, headersTimeout, requestTimeout);
  answerMalformedRequests(http);
  attachChunkStream(http, ctx, http.timeout);
  // An idle keep-alive socket must be closed by the keep-alive timer (which clients are told about), not
  // cut by the idle timeout while a client believes it still usable.
  http.keepAliveTimeout = Math.max(100, Math.min(5_000, http.timeout - 1_000));

  const sweep = setInterval(() => ctx.sessions.sweep(ctx.repo.now(), 60_000), 60_000);
  sweep.unref();
  http.once('close', () => clearInterval(sweep));
  return { server, ctx };
}

/** A chunk is at most a few MiB: one that takes longer than this to arrive is a trickle, not a slow link. */
const CHUNK_UPLOAD_DEADLINE_MS = 5 * 60_000;

/**
 * Node checks headersTimeout and requestTimeout only every 30 s (connectionsCheckingInterval, fixed when
 * restify creates the server), so a slowloris head or a trickling body would outlive them by that much.
 * Our own timers cut such sockets on time: the head of every request (the first, and each later one on a
 * kept-alive socket) must arrive within headersTimeout, and a whole request within requestTimeout (chunk
 * uploads within a few minutes, whatever requestTimeout allows manifests).
 */
function enforceDeadlines(http: HttpServer, headersTimeout: number, requestTimeout: number): void {
  const armHeads = (socket: Socket) => {
    const timer = setTimeout(() => socket.destroy(), headersTimeout);
    timer.unref();
    headTimers.set(socket, timer);
  };
  const headTimers = new WeakMap<Socket, NodeJS.Timeout>();
  http.on('connection', (socket: Socket) => {
    armHeads(socket);
    socket.once('close', () => clearTimeout(headTimers.get(socket)));
  });
  // An upgraded connection (the chunk stream) has sent its head; it keeps its own idle timeout.
  http.on('upgrade', (req: IncomingMessage) => clearTimeout(headTimers.get(req.socket)));
  http.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const socket = req.socket;
    clearTimeout(headTimers.get(socket));
    const limit =
      req.method === 'PUT' && req.url?.startsWith('/v1/chunks/')
        ? Math.min(requestTimeout, CHUNK_UPLOAD_DEADLINE_MS)
        : requestTimeout;
    // A GET or HEAD without a body has arrived with its head: what follows is the answer, which may be a
    // whole disk image sent for hours; a client that stops reading it is cut by the idle timeout instead.
    const bodiless =
      (req.method === 'GET' || req.method === 'HEAD') &&
      req.headers['content-length'] === undefined &&
      req.headers['transfer-encoding'] === undefined;
    const deadline = bodiless ? undefined : setTimeout(() => socket.destroy(), limit);
    deadline?.unref();
    res.once('close', () => {
      clearTimeout(deadline);
      if (!socket.destroyed) armHeads(socket);
    });
  });
}

/**
 * Requests Node's parser rejects (a body cut short, bytes past Content-Length, a broken head) still get the
 * {code, message} body every other error gets, and the connection is closed: it cannot be trusted.
 */
function answerMalformedRequests(http: HttpServer): void {
  http.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
    if (!socket.writable || err.code === 'ECONNRESET') {
      socket.destroy();
      return;
    }
    const timeout = err.code === 'ERR_HTTP_REQUEST_TIMEOUT' || err.code === 'ERR_HTTP_HEADERS_TIMEOUT';
    const body = JSON.stringify(
      timeout
        ? { code: 'Timeout', message: 'the request did not arrive in time' }
        : { code: 'InvalidInput', message: `malformed HTTP request (${err.code ?? 'parse error'})` },
    );
    const status = timeout ? '408 Request Timeout' : '400 Bad Request';
    socket.end(
      `HTTP/1.1 ${status}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
    );
  });
}

export interface RunningServer {
  url: string;
  port: number;
  ctx: ApiContext;
  /** Stops accepting, lets in-flight requests finish for up to `graceMs`, then cuts what is left. */
  close(graceMs?: number): Promise<void>;
  /** Serves new TLS connections with this certificate and key; open connections keep theirs. */
  setTlsCredentials(creds: { cert: Buffer | string; key: Buffer | string }): void;
}

export async function startServer(opts: ServerOptions): Promise<RunningServer> {
  const { server, ctx } = createApiServer(opts);
  const host = opts.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    // restify re-emits the http server's 'error' on itself: listen there, or EADDRINUSE is an uncaught throw.
    const onError = (err: Error) => reject(err);
    server.once('error', onError);
    server.listen(opts.port ?? 0, host, () => {
      server.off('error', onError);
      resolve();
    });
  });
  const port = (server.server.address() as AddressInfo).port;
  const shownHost = host.includes(':') ? `[${host}]` : host;
  const url = `${opts.tls ? 'https' : 'http'}://${shownHost}:${port}`;
  let closing: Promise<void> | undefined;
  const close = (graceMs = 5_000) => {
    closing ??= new Promise<void>((resolve) => {
      const http = server.server;
      const timer = setTimeout(() => {
        http.closeAllConnections();
        destroyChunkStreams(http);
      }, graceMs);
      timer.unref();
      http.close(() => {
        clearTimeout(timer);
        resolve();
      });
      http.closeIdleConnections();
    });
    return closing;
  };
  const setTlsCredentials = (creds: { cert: Buffer | string; key: Buffer | string }) => {
    if (!opts.tls) throw new Error('this server does not serve TLS');
    (server.server as unknown as TlsServer).setSecureContext({ cert: creds.cert, key: creds.key });
  };
  return { url, port, ctx, close, setTlsCredentials };
}
