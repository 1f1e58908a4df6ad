import type http from 'node:http';
import type { Socket } from 'node:net';
import type { Readable } from 'node:stream';
import {
  CHUNK_CONTENT_TYPE,
  type CommitResponse,
  type CreateSessionRequest,
  type CreateSessionResponse,
  type CreateShareRequest,
  type CreateShareResponse,
  type DamageReportRequest,
  type DamageReportResponse,
  type ForgetRequest,
  type ForgetResponse,
  type GcReport,
  ID_BYTES,
  IDS_CONTENT_TYPE,
  type JobResponse,
  MANIFEST_CONTENT_TYPE,
  MAX_MISSING_IDS,
  type MissingResponse,
  type PutChunkResponse,
  RAW_LENGTH_HEADER,
  type ShareInfo,
  type SnapshotInfo,
  type SnapshotLeaseResponse,
  type SnapshotResponse,
  type StatsResponse,
  type VerifyReport,
  type VerifyRequest,
} from '../api/protocol.js';
import { CHUNK_FETCH_PROTOCOL, CHUNK_STREAM_PROTOCOL } from '../common/chunk-stream.js';
import { DiskvaultError } from '../common/errors.js';
import { MAX_CHUNK_BYTES, zstdBound } from '../common/limits.js';
import { SEALED_CHUNK_CONTENT_TYPE, sealedChunkBound } from '../repo-engine/sealed-chunk.js';
import type { BufferAllocator } from '../storage-adapters/adapter.js';
import { checkedPlainChunk } from './chunk-check.js';
import { ChunkFetchStream, FETCH_STALL_MS } from './chunk-fetch-stream-client.js';
import { ChunkStream } from './chunk-stream-client.js';
import { errorFrom, readBounded, readJson } from './http/body-read.js';
import { RetryPolicy } from './http/retry-policy.js';
import {
  type Body,
  HttpTransport,
  isRetryableNetError,
  networkError,
  type Response,
} from './http/transport.js';
import { pacedStream, RateLimiter } from './rate-limit.js';

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
  /** The longest Retry-After (429, 503) waited for; a longer one is reported at once. Default 60 s. */
  maxRetryAfterMs?: number;
  /**
   * PEM certificates to trust for an https server instead of the system's (a private CA, or the server's own
   * self-signed certificate), as restic's --cacert.
   */
  ca?: Buffer[];
  /** Bytes per second for everything sent to the server (chunk uploads above all), all requests together. */
  limitUpload?: number | null;
  /** Bytes per second for every response body received (chunk downloads above all), all requests together. */
  limitDownload?: number | null;
  /**
   * Cancels every request and back-off once it fires (Ctrl-C), except the clean-up ones (abort a session,
   * release a lease), which must still reach the server.
   */
  signal?: AbortSignal;
}

interface SendOptions {
  retry?: boolean;
  /** A clean-up request: not cancelled by the client's signal. */
  cleanup?: boolean;
}

/**
 * The agent's one door to the server: every request goes through `send()`, which keeps connections alive,
 * retries what is worth retrying (network errors, 5xx, 429; see RetryPolicy) and never retries a 4xx (the
 * server has decided; asking again cannot change its mind). Error bodies become DiskvaultErrors carrying the
 * server's code and message, so the CLI prints what the server said.
 */
export class DiskvaultClient {
  private readonly transport: HttpTransport;
  private readonly retries: RetryPolicy;
  /** Cleared when the server turns out to predate the binary missing query. */
  private binaryMissing = true;
  private readonly downloadLimiter: RateLimiter | null;
  private readonly signal: AbortSignal | undefined;
  /** Uploads are paced (--limit-upload): they go per request, where the pacing applies. */
  private readonly limitsUploads: boolean;
  readonly concurrency: number;

  constructor(cfg: ClientOptions) {
    this.concurrency = Math.max(1, cfg.concurrency ?? 8);
    this.transport = new HttpTransport({
      server: cfg.server,
      token: cfg.token,
      concurrency: this.concurrency,
      ...(cfg.ca ? { ca: cfg.ca } : {}),
      uploadLimiter: cfg.limitUpload ? new RateLimiter(cfg.limitUpload) : null,
    });
    this.limitsUploads = Boolean(cfg.limitUpload);
    this.retries = new RetryPolicy(cfg);
    this.downloadLimiter = cfg.limitDownload ? new RateLimiter(cfg.limitDownload) : null;
    this.signal = cfg.signal;
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

  /**
   * Tells the server of chunks a read here found wrong (at most MAX_DAMAGE_REPORTS per call); it checks
   * each stored copy and answers what it now holds.
   */
  async reportDamage(chunks: DamageReportRequest['chunks']): Promise<DamageReportResponse['chunks']> {
    return (await this.json<DamageReportResponse>('POST', 'v1/chunks/damaged', { chunks })).chunks;
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
   * Opens the chunk stream of a session (common/chunk-stream.ts): one connection carrying every upload of
   * the backup. Undefined when it cannot be used: a server that predates it, or an upload rate limit (which
   * paces the per-chunk requests). Rejects with the server's error when it refuses the session or token.
   */
  async openChunkStream(sessionId: string): Promise<ChunkStream | undefined> {
    if (this.limitsUploads) return undefined;
    const opened = await this.upgrade(`v1/sessions/${enc(sessionId)}/chunk-stream`, CHUNK_STREAM_PROTOCOL);
    return opened && new ChunkStream(opened.socket, opened.head);
  }

  /**
   * Upgrades a GET of `path` to `protocol`: the connection, or undefined when the server does not offer it
   * (an older server answers the GET as a plain request, or has no such route). Rejects with the server's
   * error when it refuses.
   */
  private async upgrade(
    path: string,
    protocol: string,
  ): Promise<{ socket: Socket; head: Buffer } | undefined> {
    const url = this.transport.url(path);
    let opened: Awaited<ReturnType<HttpTransport['upgrade']>>;
    try {
      opened = await this.transport.upgrade(url, protocol, 15_000);
    } catch (err) {
      throw networkError(err, url);
    }
    if ('socket' in opened) return opened;
    const res = opened.response;
    if (res.status >= 200 && res.status < 300) {
      res.stream.resume();
      return undefined;
    }
    const err = await errorFrom(res);
    if (res.status === 404 && err.message === 'no such route') return undefined;
    throw err;
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

  /** Ends the session without a snapshot. Sent even once the client's signal has fired: it is the clean-up. */
  async abort(sessionId: string): Promise<void> {
    const res = await this.send('DELETE', `v1/sessions/${enc(sessionId)}`, undefined, {}, { cleanup: true });
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

  /** Sent even once the client's signal has fired: it is the clean-up. */
  async releaseLease(leaseId: string): Promise<void> {
    const res = await this.send('DELETE', `v1/leases/${enc(leaseId)}`, undefined, {}, { cleanup: true });
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
   * Opens a fetch stream (common/chunk-stream.ts): one connection carrying many chunk downloads. Undefined
   * when it cannot be used: a server without it (one that answers the GET as a plain request, or has no
   * such route). A download rate limit paces the stream as it paces per-chunk responses. Rejects with the
   * server's error when it refuses the token, and on a network failure.
   */
  async openChunkFetchStream(): Promise<ChunkFetchStream | undefined> {
    this.signal?.throwIfAborted();
    const opened = await this.upgrade('v1/chunk-fetch-stream', CHUNK_FETCH_PROTOCOL);
    return opened && new ChunkFetchStream(opened.socket, opened.head, FETCH_STALL_MS, this.downloadLimiter);
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
    return await checkedPlainChunk(id, encoding, payload, rawLength);
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

  /** Applies a retention policy: the answer itself, or with `prune` (and not a dry run) a job to poll. */
  forget(req: ForgetRequest): Promise<ForgetResponse | JobResponse<ForgetResponse>> {
    return this.adminRequest('POST', 'v1/forget', req);
  }

  /** Starts gc as a job. */
  startGc(): Promise<JobResponse<GcReport>> {
    return this.adminRequest('POST', 'v1/gc', {});
  }

  /** Starts a repository check as a job. */
  startVerify(req: VerifyRequest = {}): Promise<JobResponse<VerifyReport>> {
    return this.adminRequest('POST', 'v1/verify', req);
  }

  /** A job's state, progress and, once it has ended, result or error. */
  getJob<R>(jobId: string): Promise<JobResponse<R>> {
    return this.adminRequest('GET', `v1/jobs/${enc(jobId)}`);
  }

  stats(): Promise<StatsResponse> {
    return this.adminRequest('GET', 'v1/stats');
  }

  /** Forgets one snapshot (refused with 409 'protected' for a protected one). */
  async deleteSnapshot(id: string): Promise<void> {
    await this.adminRequest('DELETE', `v1/snapshots/${enc(id)}`);
  }

  /** Protects a snapshot from forget and gc, or lifts that; the snapshot as it now is. */
  async setProtection(id: string, protect: boolean): Promise<SnapshotInfo> {
    const out = await this.adminRequest<SnapshotResponse>(
      protect ? 'PUT' : 'DELETE',
      `v1/snapshots/${enc(id)}/protection`,
    );
    return out.snapshot;
  }

  /** Creates a link serving the snapshot's image without a token until it expires (never retried). */
  createShare(req: CreateShareRequest): Promise<CreateShareResponse> {
    return this.adminRequest('POST', 'v1/shares', req);
  }

  /** The share links this token may see, oldest first. */
  async listShares(): Promise<ShareInfo[]> {
    return (await this.adminRequest<{ shares: ShareInfo[] }>('GET', 'v1/shares')).shares;
  }

  /** Ends a share link at once; the link as it was. */
  async revokeShare(id: string): Promise<ShareInfo> {
    return (await this.adminRequest<{ share: ShareInfo }>('DELETE', `v1/shares/${enc(id)}`)).share;
  }

  close(): void {
    this.transport.close();
  }

  // ---- plumbing ----

  private async json<T>(method: string, path: string, body?: unknown, opts?: SendOptions): Promise<T> {
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
    { retry = true, cleanup = false }: SendOptions = {},
  ): Promise<Response> {
    const url = this.transport.url(path);
    const signal = cleanup ? undefined : this.signal;
    const replayable = body === undefined || Buffer.isBuffer(body) || typeof body === 'function';
    let lastError: unknown;
    let wait = 0;
    for (let attempt = 0; attempt < (retry ? this.retries.attempts : 1); attempt++) {
      if (attempt > 0) await this.retries.wait(wait, signal);
      signal?.throwIfAborted();
      let res: Response;
      try {
        const b = typeof body === 'function' ? body() : body;
        res = await this.transport.request(method, url, b, headers, signal);
      } catch (err) {
        if (signal?.aborted) throw signal.reason;
        lastError = err;
        wait = this.retries.backoff(attempt + 1);
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
      if (!replayable || !this.retries.isRetryableStatus(res.status) || error.code === 'Corrupt') throw error;
      const next = this.retries.waitAfter(attempt + 1, res.status, res.headers);
      if (next === null) throw error;
      wait = next;
    }
    throw lastError instanceof DiskvaultError ? lastError : networkError(lastError, url);
  }
}

function enc(s: string): string {
  return encodeURIComponent(s);
}
