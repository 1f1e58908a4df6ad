import { createHash, randomInt } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  CHUNK_CONTENT_TYPE,
  type CommitResponse,
  type CreateSessionRequest,
  type CreateSessionResponse,
  type ErrorBody,
  ID_BYTES,
  IDS_CONTENT_TYPE,
  MANIFEST_CONTENT_TYPE,
  MAX_MISSING_IDS,
  type MissingResponse,
  type PutChunkResponse,
  RAW_LENGTH_HEADER,
  type SnapshotInfo,
  type SnapshotLeaseResponse,
} from '../api/protocol.js';
import { AGENT_USER_AGENT } from '../api/version.js';
import { codeForStatus, DiskvaultError, HashMismatchError, isErrorCode } from '../common/errors.js';
import { MAX_CHUNK_BYTES, zstdBound } from '../common/limits.js';
import { SEALED_CHUNK_CONTENT_TYPE, sealedChunkBound } from '../repo-engine/sealed-chunk.js';
import type { BufferAllocator } from '../storage-adapters/adapter.js';
import { paced, pacedStream, RateLimiter } from './rate-limit.js';
import { decompressExactly } from './zstd-bounded.js';

/** Where the server is, how to reach it, and how hard to try. */
export interface ClientOptions {
  server: string;
  token: string;
  /** Sockets kept open to the server; uploads beyond this queue in the agent. Default 8. */
  concurrency?: number;
  /** Attempts per request, including the first. Default 6 (about 30 s of backoff in all). */
  attempts?: number;
  /** First backoff in ms; doubled per attempt, capped at maxBackoffMs. Default 500. */
  backoffMs?: number;
  maxBackoffMs?: number;
  /**
   * PEM certificates to trust for an https server instead of the system's (a private CA, or the server's own
   * self-signed certificate), as restic's --cacert.
   */
  ca?: Buffer[];
  /** Bytes per second for everything sent to the server (chunk uploads above all), all requests together. */
  limitUpload?: number | null;
  /** Bytes per second for every response body received (chunk downloads above all), all requests together. */
  limitDownload?: number | null;
}

/** A body that can be sent again on retry (a Buffer), or sent once (a stream). */
type Body = Buffer | Readable | AsyncIterable<Buffer>;

interface Response {
  status: number;
  headers: http.IncomingHttpHeaders;
  /** The body; paced by the download limit once the status is 2xx. */
  stream: Readable;
}

/**
 * Statuses that mean "try again later": the server or something in between is overloaded or restarting.
 * 507 (storage full) and 501 are not: retrying them only delays the answer by the whole backoff, per chunk.
 */
function isRetryableStatus(status: number): boolean {
  return status === 429 || (status >= 500 && status !== 501 && status !== 507);
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

function isRetryableNetError(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException)?.code;
  return typeof code === 'string' && RETRYABLE_NET_CODES.has(code);
}

/**
 * The agent's one door to the server: every request goes through `send()`, which keeps connections alive,
 * retries what is worth retrying (network errors, 5xx, 429) with capped exponential backoff and jitter, and
 * never retries a 4xx (the server has decided; asking again cannot change its mind). Error bodies become
 * DiskvaultErrors carrying the server's code and message, so the CLI prints what the server said.
 */
export class DiskvaultClient {
  private readonly base: URL;
  private readonly agent: http.Agent;
  private readonly transport: typeof http | typeof https;
  private readonly auth: string;
  private readonly attempts: number;
  /** Cleared when the server turns out to predate the binary missing query. */
  private binaryMissing = true;
  private readonly backoffMs: number;
  private readonly maxBackoffMs: number;
  private readonly uploadLimiter: RateLimiter | null;
  private readonly downloadLimiter: RateLimiter | null;
  readonly concurrency: number;

  constructor(cfg: ClientOptions) {
    this.base = new URL(cfg.server.endsWith('/') ? cfg.server : `${cfg.server}/`);
    if (this.base.protocol !== 'http:' && this.base.protocol !== 'https:') {
      throw new DiskvaultError('InvalidInput', `server URL ${cfg.server} is neither http nor https`);
    }
    this.concurrency = Math.max(1, cfg.concurrency ?? 8);
    this.transport = this.base.protocol === 'https:' ? https : http;
    // One more socket than uploads in flight so a missing-query or commit never waits behind uploads.
    const agentOpts = { keepAlive: true, maxSockets: this.concurrency + 2, scheduling: 'lifo' as const };
    this.agent =
      this.base.protocol === 'https:'
        ? new https.Agent({ ...agentOpts, ...(cfg.ca?.length ? { ca: cfg.ca } : {}) })
        : new http.Agent(agentOpts);
    this.auth = `Bearer ${cfg.token}`;
    this.attempts = Math.max(1, cfg.attempts ?? 6);
    this.backoffMs = cfg.backoffMs ?? 500;
    this.maxBackoffMs = cfg.maxBackoffMs ?? 8000;
    this.uploadLimiter = cfg.limitUpload ? new RateLimiter(cfg.limitUpload) : null;
    this.downloadLimiter = cfg.limitDownload ? new RateLimiter(cfg.limitDownload) : null;
  }

  // ---- backup side ----

  /** `tenant`: only a global admin may name one (an offsite copy keeping each snapshot's tenant). */
  /** `e2e`: an end-to-end session, opened with the key's upload proof (or, for an admin, its key id). */
  async createSession(
    host: string,
    disk: string,
    tenant?: string,
    e2e?: CreateSessionRequest['e2e'],
  ): Promise<CreateSessionResponse> {
    return await this.json<CreateSessionResponse>('POST', 'v1/sessions', {
      host,
      disk,
      ...(tenant !== undefined ? { tenant } : {}),
      ...(e2e !== undefined ? { e2e } : {}),
    });
  }

  /** Ids the server wants uploaded, from `ids` (at most MAX_MISSING_IDS per call; the caller batches). */
  async missing(sessionId: string, ids: string[]): Promise<string[]> {
    const res = await this.json<MissingResponse>('POST', `v1/sessions/${enc(sessionId)}/missing`, { ids });
    return res.missing;
  }

  /**
   * `missing` in binary: `ids` is consecutive 32-byte ids (at most MAX_MISSING_IDS), and so is the answer.
   * A server older than the binary form refuses it with 400 (a well-formed binary query has no other reason
   * to be refused): from then on this client asks it in JSON, so a new agent still backs up to it.
   */
  async missingBinary(sessionId: string, ids: Buffer): Promise<Buffer> {
    if (this.binaryMissing) {
      try {
        return await this.missingBinaryOnce(sessionId, ids);
      } catch (err) {
        if (!(err instanceof DiskvaultError && err.code === 'InvalidInput')) throw err;
        this.binaryMissing = false;
      }
    }
    const hex: string[] = [];
    for (let at = 0; at + ID_BYTES <= ids.length; at += ID_BYTES)
      hex.push(ids.toString('hex', at, at + ID_BYTES));
    return Buffer.from((await this.missing(sessionId, hex)).join(''), 'hex');
  }

  private async missingBinaryOnce(sessionId: string, ids: Buffer): Promise<Buffer> {
    const res = await this.send('POST', `v1/sessions/${enc(sessionId)}/missing`, ids, {
      'content-type': IDS_CONTENT_TYPE,
    });
    const type = String(res.headers['content-type'] ?? '');
    if (type.split(';')[0].trim().toLowerCase() !== IDS_CONTENT_TYPE) {
      res.stream.resume();
      throw new DiskvaultError('Corrupt', `missing query: the server answered ${type || 'no content type'}`);
    }
    const missing = await readBounded(res, Math.min(ids.length, MAX_MISSING_IDS * ID_BYTES), 'missing query');
    if (missing.length % ID_BYTES !== 0)
      throw new DiskvaultError('Corrupt', `missing query: ${missing.length} bytes is not whole ids`);
    return missing;
  }

  async putChunk(
    sessionId: string,
    id: string,
    payload: Buffer,
    encoding: 'raw' | 'zstd' | 'sealed',
  ): Promise<PutChunkResponse> {
    const headers: http.OutgoingHttpHeaders = {
      'content-type': encoding === 'sealed' ? SEALED_CHUNK_CONTENT_TYPE : CHUNK_CONTENT_TYPE,
    };
    if (encoding === 'zstd') headers['content-encoding'] = 'zstd';
    const res = await this.send('PUT', `v1/chunks/${enc(id)}?session=${enc(sessionId)}`, payload, headers);
    return (await readJson(res)) as PutChunkResponse;
  }

  /**
   * Sends the binary manifest. A Buffer body is retried like any request; a stream can only be sent once,
   * so pass a function returning a fresh iterable when the body is large and should survive a retry.
   * A 409 surfaces as a DiskvaultError with code 'Conflict' and details.missing (or details.snapshot when a
   * given snapshotId is taken).
   */
  async commit(
    sessionId: string,
    body: Body | (() => Body),
    opts: { snapshotId?: string } = {},
  ): Promise<SnapshotInfo> {
    // snapshotId (admin only) keeps the id a copied snapshot has in its source repository.
    const keep = opts.snapshotId !== undefined ? `?id=${enc(opts.snapshotId)}` : '';
    const res = await this.send('POST', `v1/sessions/${enc(sessionId)}/commit${keep}`, body, {
      'content-type': MANIFEST_CONTENT_TYPE,
    });
    return ((await readJson(res)) as CommitResponse).snapshot;
  }

  async abort(sessionId: string): Promise<void> {
    const res = await this.send('DELETE', `v1/sessions/${enc(sessionId)}`);
    res.stream.resume();
  }

  // ---- read side (restore uses these) ----

  /** Holds the snapshot's chunks until `expiresAt` (renew before), even if it is forgotten meanwhile. */
  async takeLease(snapshotId: string): Promise<SnapshotLeaseResponse> {
    return await this.json<SnapshotLeaseResponse>('POST', `v1/snapshots/${enc(snapshotId)}/lease`, {});
  }

  async renewLease(leaseId: string): Promise<SnapshotLeaseResponse> {
    return await this.json<SnapshotLeaseResponse>('POST', `v1/leases/${enc(leaseId)}`, {});
  }

  async releaseLease(leaseId: string): Promise<void> {
    const res = await this.send('DELETE', `v1/leases/${enc(leaseId)}`);
    res.stream.resume();
  }

  async listSnapshots(filter: { host?: string; disk?: string } = {}): Promise<SnapshotInfo[]> {
    const q = new URLSearchParams();
    if (filter.host) q.set('host', filter.host);
    if (filter.disk) q.set('disk', filter.disk);
    const qs = q.toString();
    const res = await this.json<SnapshotInfo[] | { snapshots: SnapshotInfo[] }>(
      'GET',
      `v1/snapshots${qs ? `?${qs}` : ''}`,
    );
    return Array.isArray(res) ? res : res.snapshots;
  }

  async getSnapshot(id: string): Promise<SnapshotInfo> {
    const res = await this.json<SnapshotInfo | { snapshot: SnapshotInfo }>('GET', `v1/snapshots/${enc(id)}`);
    return 'snapshot' in res && typeof res.snapshot === 'object' ? res.snapshot : (res as SnapshotInfo);
  }

  /** The binary manifest as a stream (parse it with ManifestReader, source 'wire'). */
  async getManifest(id: string): Promise<Readable> {
    const res = await this.send('GET', `v1/snapshots/${enc(id)}/manifest`);
    return res.stream;
  }

  /**
   * A chunk's raw bytes, decompressed (bounded by the announced raw length) and checked against its id.
   * `maxRawLength` (the manifest's length, when known) bounds what is read.
   */
  async getChunk(id: string, maxRawLength?: number): Promise<Buffer> {
    const { encoding, payload, rawLength } = await this.getChunkPayload(id, maxRawLength);
    if (encoding === 'sealed')
      throw new DiskvaultError('InvalidInput', `chunk ${id} is sealed end to end: opening it needs its key`, {
        chunk: id,
      });
    const raw = encoding === 'zstd' ? await decompressExactly(payload, rawLength, `chunk ${id}`) : payload;
    const actual = createHash('sha256').update(raw).digest('hex');
    if (actual !== id)
      throw new HashMismatchError(`chunk ${id}: received bytes hash to ${actual}`, { chunk: id });
    return raw;
  }

  /**
   * A chunk's payload as the server sent it, zstd or raw, NOT checked against its id: the caller must
   * decompress within `rawLength` and check SHA-256 before using it (the server skips that check for a client
   * that accepts zstd, see docs/restore.md). Restore does it on worker threads. The body is read only up to
   * what `maxRawLength` (default the largest chunk any repository may have) can compress to, into a buffer
   * from `alloc` when the length is announced (a restore recycles its buffers).
   */
  async getChunkPayload(
    id: string,
    maxRawLength = MAX_CHUNK_BYTES,
    alloc?: BufferAllocator,
  ): Promise<{ encoding: 'raw' | 'zstd' | 'sealed'; payload: Buffer; rawLength: number }> {
    const res = await this.send('GET', `v1/chunks/${enc(id)}`, undefined, { 'accept-encoding': 'zstd' });
    const header = String(res.headers['content-encoding'] ?? '').toLowerCase();
    const type = String(res.headers['content-type'] ?? '')
      .split(';')[0]
      ?.trim()
      .toLowerCase();
    // A sealed chunk (end to end) comes as stored, never content-encoded; its key's holder opens it.
    if (type === SEALED_CHUNK_CONTENT_TYPE && (header === '' || header === 'identity')) {
      const payload = await readBounded(res, sealedChunkBound(maxRawLength), `chunk ${id}`, alloc);
      return { encoding: 'sealed', payload, rawLength: Number(res.headers[RAW_LENGTH_HEADER]) };
    }
    let encoding: 'raw' | 'zstd';
    if (header === 'zstd') encoding = 'zstd';
    else if (header === '' || header === 'identity') encoding = 'raw';
    else {
      res.stream.resume();
      throw new DiskvaultError('Corrupt', `chunk ${id}: unexpected content encoding '${header}'`, {
        chunk: id,
      });
    }
    const announced = Number(res.headers[RAW_LENGTH_HEADER]);
    if (
      encoding === 'zstd' &&
      (!Number.isSafeInteger(announced) || announced <= 0 || announced > maxRawLength)
    ) {
      res.stream.resume();
      throw new DiskvaultError(
        'Corrupt',
        `chunk ${id}: server sent zstd without a valid ${RAW_LENGTH_HEADER} header (at most ${maxRawLength})`,
        { chunk: id },
      );
    }
    const cap = encoding === 'zstd' ? zstdBound(announced) : maxRawLength;
    const payload = await readBounded(res, cap, `chunk ${id}`, alloc);
    return { encoding, payload, rawLength: encoding === 'zstd' ? announced : payload.length };
  }

  // ---- admin side ----

  /**
   * An admin route, JSON in and out. Only a GET is retried: a forget or gc whose answer was lost is not sent
   * again behind the admin's back.
   */
  adminRequest<T>(method: string, path: string, body?: unknown): Promise<T> {
    return this.json<T>(method, path, body, { retry: method === 'GET' });
  }

  close(): void {
    this.agent.destroy();
  }

  // ---- plumbing ----

  private async json<T>(
    method: string,
    path: string,
    body?: unknown,
    opts?: { retry?: boolean },
  ): Promise<T> {
    const buf = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const res = await this.send(method, path, buf, buf ? { 'content-type': 'application/json' } : {}, opts);
    return (await readJson(res)) as T;
  }

  /**
   * One logical request: retried on network errors, 5xx and 429 while the body can be replayed. Resolves with
   * a 2xx response whose body is still unread; any other status becomes a DiskvaultError.
   */
  private async send(
    method: string,
    path: string,
    body?: Body | (() => Body),
    headers: http.OutgoingHttpHeaders = {},
    { retry = true }: { retry?: boolean } = {},
  ): Promise<Response> {
    const url = new URL(path, this.base);
    const replayable = body === undefined || Buffer.isBuffer(body) || typeof body === 'function';
    let lastError: unknown;
    for (let attempt = 0; attempt < (retry ? this.attempts : 1); attempt++) {
      if (attempt > 0) await sleep(this.delay(attempt));
      let res: Response;
      try {
        const b = typeof body === 'function' ? body() : body;
        res = await this.once(method, url, b, headers);
      } catch (err) {
        lastError = err;
        if (replayable && isRetryableNetError(err)) continue;
        throw networkError(err, url);
      }
      if (res.status >= 200 && res.status < 300) {
        if (this.downloadLimiter) res.stream = pacedStream(res.stream, this.downloadLimiter);
        return res;
      }
      const error = await errorFrom(res);
      lastError = error;
      // A 500 saying Corrupt is the stored object itself, not a passing fault: asking again gets the same.
      if (replayable && isRetryableStatus(res.status) && error.code !== 'Corrupt') continue;
      throw error;
    }
    throw lastError instanceof DiskvaultError ? lastError : networkError(lastError, url);
  }

  /** Backoff: base * 2^(attempt-1), capped, with full jitter in its upper half so agents don't stampede. */
  private delay(attempt: number): number {
    const ceiling = Math.min(this.maxBackoffMs, this.backoffMs * 2 ** (attempt - 1));
    return Math.floor(ceiling / 2 + randomInt(Math.max(1, Math.floor(ceiling / 2))));
  }

  private once(
    method: string,
    url: URL,
    body: Buffer | Readable | AsyncIterable<Buffer> | undefined,
    headers: http.OutgoingHttpHeaders,
  ): Promise<Response> {
    return new Promise((resolve, reject) => {
      const h: http.OutgoingHttpHeaders = {
        authorization: this.auth,
        'user-agent': AGENT_USER_AGENT,
        ...headers,
      };
      if (body === undefined) h['content-length'] = 0;
      else if (Buffer.isBuffer(body)) h['content-length'] = body.length;
      const req = this.transport.request(url, { method, headers: h, agent: this.agent });
      req.on('response', (stream) =>
        resolve({ status: stream.statusCode ?? 0, headers: stream.headers, stream }),
      );
      req.on('error', reject);
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
}

function enc(s: string): string {
  return encodeURIComponent(s);
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

function networkError(err: unknown, url: URL): DiskvaultError {
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
function tlsProblem(e: NodeJS.ErrnoException | undefined, url: URL): string | undefined {
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

/**
 * A response body of at most `cap` bytes, read into one buffer sized by Content-Length when the server sent
 * one (no concatenation copy); refused as Corrupt as soon as it would exceed `cap` or its announced length.
 */
async function readBounded(
  res: Response,
  cap: number,
  what: string,
  alloc: BufferAllocator = Buffer.allocUnsafe,
): Promise<Buffer> {
  const declared =
    res.headers['content-length'] === undefined ? undefined : Number(res.headers['content-length']);
  const tooBig = (n: number) =>
    new DiskvaultError('Corrupt', `${what}: the server sent ${n} bytes or more, at most ${cap} expected`);
  if (declared !== undefined && (!Number.isSafeInteger(declared) || declared < 0 || declared > cap)) {
    res.stream.destroy();
    throw tooBig(declared);
  }
  if (declared !== undefined) {
    const out = alloc(declared);
    let at = 0;
    for await (const p of res.stream) {
      const part = p as Buffer;
      if (at + part.length > declared) {
        res.stream.destroy();
        throw new DiskvaultError(
          'Corrupt',
          `${what}: the server sent more than its announced ${declared} bytes`,
        );
      }
      part.copy(out, at);
      at += part.length;
    }
    if (at !== declared)
      throw new DiskvaultError(
        'Unavailable',
        `${what}: the connection ended after ${at} of ${declared} bytes`,
      );
    return out;
  }
  const parts: Buffer[] = [];
  let total = 0;
  for await (const p of res.stream) {
    total += (p as Buffer).length;
    if (total > cap) {
      res.stream.destroy();
      throw tooBig(total);
    }
    parts.push(p as Buffer);
  }
  return Buffer.concat(parts, total);
}

async function readAll(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const p of stream) parts.push(p as Buffer);
  return Buffer.concat(parts);
}

async function readJson(res: Response): Promise<unknown> {
  const text = (await readAll(res.stream)).toString('utf8');
  if (text === '') return {};
  try {
    return JSON.parse(text);
  } catch {
    throw new DiskvaultError('Unavailable', `server sent a response that is not JSON (status ${res.status})`);
  }
}

/** Turns a non-2xx response into the DiskvaultError the server meant, keeping its message and details. */
async function errorFrom(res: Response): Promise<DiskvaultError> {
  let body: Partial<ErrorBody> = {};
  try {
    const text = (await readAll(res.stream)).toString('utf8');
    body = text ? (JSON.parse(text) as Partial<ErrorBody>) : {};
  } catch {
    body = {};
  }
  const code = isErrorCode(body.code) ? body.code : codeForStatus(res.status);
  const message =
    typeof body.message === 'string' && body.message ? body.message : `server answered HTTP ${res.status}`;
  return new DiskvaultError(code, message, { status: res.status, ...(body.details ?? {}) });
}
