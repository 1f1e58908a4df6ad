import http from 'node:http';
import https from 'node:https';
import type { Socket } from 'node:net';
import { Readable } from 'node:stream';
import { AGENT_USER_AGENT } from '../../api/version.js';
import { DiskvaultError } from '../../common/errors.js';
import { paced, type RateLimiter } from '../rate-limit.js';

/** A body that can be sent again on retry (a Buffer), or sent once (a stream). */
export type Body = Buffer | Readable | AsyncIterable<Buffer>;

export interface Response {
  status: number;
  headers: http.IncomingHttpHeaders;
  /** The body; paced by the download limit once the status is 2xx. */
  stream: Readable;
}

export interface TransportOptions {
  server: string;
  token: string;
  /** Sockets kept open beyond the two reserved for queries and commits. */
  concurrency: number;
  /** PEM certificates to trust for an https server instead of the system's. */
  ca?: Buffer[];
  uploadLimiter: RateLimiter | null;
}

/**
 * One HTTP exchange with the server, http or https, over kept-alive sockets: sends the body (paced by the
 * upload limit) and resolves at the response head. Retrying and reading the body are the caller's business.
 */
export class HttpTransport {
  readonly base: URL;
  private readonly agent: http.Agent;
  private readonly module: typeof http | typeof https;
  private readonly auth: string;
  private readonly uploadLimiter: RateLimiter | null;

  constructor(o: TransportOptions) {
    this.base = new URL(o.server.endsWith('/') ? o.server : `${o.server}/`);
    if (this.base.protocol !== 'http:' && this.base.protocol !== 'https:') {
      throw new DiskvaultError('InvalidInput', `server URL ${o.server} is neither http nor https`);
    }
    this.module = this.base.protocol === 'https:' ? https : http;
    // One more socket than uploads in flight so a missing-query or commit never waits behind uploads.
    const agentOpts = { keepAlive: true, maxSockets: o.concurrency + 2, scheduling: 'lifo' as const };
    this.agent =
      this.base.protocol === 'https:'
        ? new https.Agent({ ...agentOpts, ...(o.ca?.length ? { ca: o.ca } : {}) })
        : new http.Agent(agentOpts);
    this.auth = `Bearer ${o.token}`;
    this.uploadLimiter = o.uploadLimiter;
  }

  url(path: string): URL {
    return new URL(path, this.base);
  }

  /** `signal` destroys the request (and its response) when it fires; the promise then rejects with its reason. */
  request(
    method: string,
    url: URL,
    body: Body | undefined,
    headers: http.OutgoingHttpHeaders,
    signal?: AbortSignal,
  ): Promise<Response> {
    return new Promise((resolve, reject) => {
      const h: http.OutgoingHttpHeaders = {
        authorization: this.auth,
        'user-agent': AGENT_USER_AGENT,
        ...headers,
      };
      if (body === undefined) h['content-length'] = 0;
      else if (Buffer.isBuffer(body)) h['content-length'] = body.length;
      const req = this.module.request(url, {
        method,
        headers: h,
        agent: this.agent,
        ...(signal ? { signal } : {}),
      });
      req.on('response', (stream) =>
        resolve({ status: stream.statusCode ?? 0, headers: stream.headers, stream }),
      );
      req.on('error', (err) => reject(signal?.aborted ? signal.reason : err));
      if (body === undefined) req.end();
      else if (Buffer.isBuffer(body) && !this.uploadLimiter) req.end(body);
      else {
        const src = this.uploadLimiter
          ? Readable.from(paced(body, this.uploadLimiter), { objectMode: false })
          : body instanceof Readable
            ? body
            : Readable.from(body as AsyncIterable<Buffer>);
        src.on('error', (err) => req.destroy(err));
        src.pipe(req);
      }
    });
  }

  /**
   * Asks to switch the connection to `protocol` (GET with Upgrade). Resolves with the socket once the server
   * agrees (101 naming that protocol), or with the response when it answers as to a plain request; rejects
   * on a network failure or when no answer comes within `timeoutMs`. No upload limit applies: a caller
   * with one sends per request instead.
   */
  upgrade(
    url: URL,
    protocol: string,
    timeoutMs: number,
  ): Promise<{ socket: Socket; head: Buffer } | { response: Response }> {
    return new Promise((resolve, reject) => {
      const req = this.module.request(url, {
        method: 'GET',
        agent: this.agent,
        headers: {
          authorization: this.auth,
          'user-agent': AGENT_USER_AGENT,
          connection: 'Upgrade',
          upgrade: protocol,
        },
      });
      req.on('upgrade', (res, socket, head) => {
        if ((res.headers.upgrade ?? '').toLowerCase() !== protocol) {
          socket.destroy();
          reject(
            new DiskvaultError(
              'Unavailable',
              `the server upgraded to ${res.headers.upgrade}, not ${protocol}`,
            ),
          );
          return;
        }
        // The open's time limit is not the connection's: its user may pause for longer.
        socket.setTimeout(0);
        socket.setNoDelay(true);
        resolve({ socket, head });
      });
      req.on('response', (stream) =>
        resolve({ response: { status: stream.statusCode ?? 0, headers: stream.headers, stream } }),
      );
      req.on('error', reject);
      // A server that announced the protocol answers at once; one that does not is not waited for.
      req.setTimeout(timeoutMs, () =>
        req.destroy(Object.assign(new Error('no answer'), { code: 'ETIMEDOUT' })),
      );
      req.end();
    });
  }

  close(): void {
    this.agent.destroy();
  }
}

const RETRYABLE_NET_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'EAI_AGAIN',
  'ENETUNREACH',
  'EHOSTUNREACH',
  'ENOTFOUND',
  'UND_ERR_SOCKET',
]);

/** A failure to reach the server that may pass: the request is worth sending again. */
export function isRetryableNetError(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException)?.code;
  return typeof code === 'string' && RETRYABLE_NET_CODES.has(code);
}

/** OpenSSL's verdicts on a server certificate the agent cannot trust; retrying cannot change them. */
const UNTRUSTED_CERT_CODES = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_SIGNATURE_FAILURE',
]);

/** A failed exchange as the DiskvaultError to show a person: what went wrong and, for TLS, what to do. */
export function networkError(err: unknown, url: URL): DiskvaultError {
  if (err instanceof DiskvaultError) return err;
  const e = err as NodeJS.ErrnoException;
  const tls = tlsProblem(e, url);
  if (tls) return new DiskvaultError('Unavailable', tls, undefined, { cause: err });
  let what = e?.code ? `${e.code}` : String(e?.message ?? err);
  // A TLS server cuts a plain-http request without a word: the one hint that can be given.
  if (e?.code === 'ECONNRESET' && url.protocol === 'http:')
    what += ' (if the server serves TLS, use https://)';
  return new DiskvaultError('Unavailable', `cannot reach the server at ${url.origin}: ${what}`, undefined, {
    cause: err,
  });
}

/** What to tell a person whose https connection failed on the server's certificate, or undefined. */
export function tlsProblem(e: NodeJS.ErrnoException | undefined, url: URL): string | undefined {
  const code = e?.code ?? '';
  const server = `the server at ${url.origin}`;
  if (UNTRUSTED_CERT_CODES.has(code))
    return `${server} presented a TLS certificate this agent does not trust (${code}): give the certificate of the CA that signed it, or the server's own, with --cacert FILE (or "cacert" in the config file)`;
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') {
    const names = (e as { cert?: { subjectaltname?: string } }).cert?.subjectaltname ?? 'no names';
    return `${server} presented a TLS certificate for another name (it lists ${names}, not ${url.hostname}): connect by a name it lists, or give the server a certificate for this one`;
  }
  if (code === 'CERT_HAS_EXPIRED' || code === 'CERT_NOT_YET_VALID')
    return `${server} presented a TLS certificate that is ${code === 'CERT_HAS_EXPIRED' ? 'expired' : 'not valid yet'}: renew it on the server, then 'systemctl reload diskvault-server' (or send the server SIGHUP)`;
  if (code === 'EPROTO' && url.protocol === 'https:') {
    // OpenSSL's message is a multi-line record; its reason ('wrong version number') is what helps.
    const reason = /SSL routines:[^:]*:([^:]+)/.exec(e?.message ?? '')?.[1] ?? code;
    return `cannot speak TLS with ${server}: it answered something that is not TLS (${reason}); is it serving plain http? Try http://`;
  }
  return undefined;
}
