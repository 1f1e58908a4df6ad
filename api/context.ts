import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Next, Request, Response } from 'restify';
import { InvalidInputError } from '../common/errors.js';
import type { RepositoryApi } from '../repo-engine/types.js';
import { authenticate, type Principal } from './auth.js';
import type { CommitGate } from './commit-gate.js';
import { sendError } from './errors.js';
import type { JobRegistry } from './jobs.js';
import type { Metrics } from './metrics.js';
import type { SessionRegistry } from './session-registry.js';
import type { TokenStore } from './token-store.js';

/** Everything a route needs, built once by server.ts. */
export interface ApiContext {
  repo: RepositoryApi;
  tokens: TokenStore;
  sessions: SessionRegistry;
  jobs: JobRegistry;
  metrics: Metrics;
  log: (line: string) => void;
  maxManifestBytes: number;
  /** Open upload sessions, and separately snapshot leases, one token may hold. */
  maxSessionsPerToken: number;
  /** Bounds concurrent commits (api/commit-gate.ts). */
  commits: CommitGate;
  /** False: no upload stream (api/chunk-stream.ts) is offered or served; backups upload per chunk. */
  chunkStream?: boolean;
  /** False: no fetch stream (common/chunk-stream.ts) is offered or served; restores fetch per chunk. */
  chunkFetchStream?: boolean;
}

/** The token id of each request, for the request log (never the token itself). */
export const requestTokenIds = new WeakMap<IncomingMessage, string>();

type Handler = (req: Request, res: Response, principal: Principal) => Promise<void>;

/**
 * Wraps a route: authenticates (unless `auth: false`), runs it, and turns any throw into the one error
 * shape. A response sent before the request body was read to its end closes the connection, so an unread
 * (possibly huge) body is never drained.
 */
export function route(ctx: ApiContext, handler: Handler, opts: { auth?: boolean } = {}) {
  return function handle(req: Request, res: Response, next: Next): void {
    const run = async () => {
      const principal =
        opts.auth === false
          ? { tokenId: '', role: 'agent' as const, hosts: [], tenant: '' }
          : authenticate(req, ctx.tokens);
      if (principal.tokenId) requestTokenIds.set(req, principal.tokenId);
      await handler(req, res, principal);
    };
    run()
      .catch((err) => {
        closeIfBodyUnread(req, res);
        sendError(res, err, ctx.log);
      })
      .finally(() => next());
  };
}

export function closeIfBodyUnread(req: IncomingMessage, res: ServerResponse): void {
  if (req.complete || res.headersSent) return;
  res.setHeader('connection', 'close');
  res.once('finish', () => {
    // Stop reading, let the client see the answer, then cut the socket so a trickling sender cannot hold it.
    req.pause();
    req.socket.end();
    setTimeout(() => req.socket.destroy(), 2000).unref();
  });
}

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.statusCode = status;
  res.setHeader('content-type', 'application/json');
  res.setHeader('content-length', Buffer.byteLength(text));
  res.end(text);
}

export function sendNoContent(res: ServerResponse): void {
  res.statusCode = 204;
  res.end();
}

export function query(req: IncomingMessage): URLSearchParams {
  return new URL(req.url ?? '/', 'http://localhost').searchParams;
}

export function param(req: Request, name: string): string {
  const v = (req.params as Record<string, unknown> | undefined)?.[name];
  if (typeof v !== 'string') throw new InvalidInputError(`missing ${name}`);
  return v;
}
