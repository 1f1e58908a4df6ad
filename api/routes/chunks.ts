import type { IncomingMessage } from 'node:http';
import type { Server } from 'restify';
import { decompress } from 'zstd-napi';
import { InvalidInputError, isDiskvaultError, NotFoundError } from '../../common/errors.js';
import { zstdBound } from '../../common/limits.js';
import { BufferRecycler } from '../../repo-engine/buffer-recycler.js';
import { SEALED_CHUNK_CONTENT_TYPE, sealedChunkBound } from '../../repo-engine/sealed-chunk.js';
import type { ChunkLease } from '../../repo-engine/types.js';
import { isGlobalAdmin, requireWriter, tenantScope } from '../auth.js';
import { readCapped, readJson } from '../body.js';
import { storeUploadedChunk } from '../chunk-upload.js';
import { type ApiContext, param, query, route, sendJson } from '../context.js';
import {
  CHUNK_CONTENT_TYPE,
  type DamageReportRequest,
  type DamageReportResponse,
  MAX_DAMAGE_REPORTS,
  type PutChunkResponse,
  RAW_LENGTH_HEADER,
} from '../protocol.js';
import { asObject, checkId, checkSessionId } from '../validation.js';

function requestEncoding(req: IncomingMessage): 'raw' | 'zstd' | 'sealed' {
  // A sealed chunk (end-to-end) is sent as its own content type, never content-encoded.
  if (isSealedBody(req.headers['content-type'])) return 'sealed';
  const h = (req.headers['content-encoding'] ?? '').trim().toLowerCase();
  if (h === '' || h === 'identity') return 'raw';
  if (h === 'zstd') return 'zstd';
  throw new InvalidInputError(`unsupported Content-Encoding ${JSON.stringify(h)} (use zstd or none)`);
}

function isSealedBody(type: string | undefined): boolean {
  return type !== undefined && type.split(';')[0].trim().toLowerCase() === SEALED_CHUNK_CONTENT_TYPE;
}

function acceptsZstd(req: IncomingMessage): boolean {
  const h = req.headers['accept-encoding'];
  if (!h) return false;
  return h.split(',').some((part) => {
    const [name, ...params] = part.trim().toLowerCase().split(';');
    return name.trim() === 'zstd' && !params.some((q) => /^\s*q=0(\.0*)?\s*$/.test(q));
  });
}

/** Chunk upload and download: one chunk per request, never buffered beyond one chunk. */
export function registerChunkRoutes(server: Server, ctx: ApiContext): void {
  const { repo, sessions } = ctx;

  /** Same answer for "absent" and "another tenant's": a tenant must not learn what others hold. */
  const notFound = (id: string) => new NotFoundError(`chunk ${id} not found`);

  const tenantMayRead = (tenant: string, id: string): boolean =>
    repo.chunksReadableBy(tenant, [id]).includes(id);

  // Upload bodies are read into recycled buffers: nothing keeps a body once putChunk has settled.
  const bodies = new BufferRecycler(32 * 1024 * 1024);
  const takeBody = (n: number) => bodies.takeBuffer(n);

  server.put(
    '/v1/chunks/:id',
    route(ctx, async (req, res, p) => {
      requireWriter(p);
      const id = checkId(param(req, 'id'), 'chunk id');
      const sid = checkSessionId(query(req).get('session') ?? undefined);
      const encoding = requestEncoding(req);
      const max = repo.chunker.max;
      const cap = encoding === 'sealed' ? sealedChunkBound(max) : encoding === 'zstd' ? zstdBound(max) : max;
      // Refusing by Content-Length happens before any byte of the body is read (see readCapped).
      sessions.require(sid, p);
      const payload = await readCapped(req, cap, 'chunk', takeBody);
      let stored: boolean;
      try {
        ({ stored } = await storeUploadedChunk(ctx, sid, id, payload, encoding));
      } finally {
        bodies.giveBack(payload);
      }
      // 201 when the tenant did not hold the chunk before, 200 when it did: never what other tenants hold.
      const body: PutChunkResponse = { id, stored };
      const text = JSON.stringify(body);
      res.statusCode = stored ? 201 : 200;
      res.setHeader('content-type', 'application/json');
      res.setHeader('content-length', Buffer.byteLength(text));
      res.end(text);
    }),
  );

  // Any token may report what its reads found: the server checks a copy itself before believing a report,
  // except a sealed chunk's, which only its key's holders (its owners) can judge and whose reports touch only
  // their own snapshots (Repository.reportDamage).
  server.post(
    '/v1/chunks/damaged',
    route(ctx, async (req, res, p) => {
      const reports = checkDamageReports(await readJson(req, DAMAGE_REPORT_BYTES));
      const tenant = tenantScope(p);
      // A sealed chunk is marked damaged on the word of `tenant` (a holder of its key) or of a global admin;
      // a global reader holds no key and may change nothing, so its report only has the server check the copy.
      const takeWord = tenant !== undefined || isGlobalAdmin(p);
      const chunks: DamageReportResponse['chunks'] = [];
      for (const r of reports)
        chunks.push({ id: r.id, status: await repo.reportDamage(tenant, r.id, r.detail, takeWord) });
      sendJson(res, 200, { chunks } satisfies DamageReportResponse);
    }),
  );

  server.get(
    '/v1/chunks/:id',
    route(ctx, async (req, res, p) => {
      const id = checkId(param(req, 'id'), 'chunk id');
      const tenant = tenantScope(p);
      if (tenant !== undefined && !tenantMayRead(tenant, id)) throw notFound(id);
      // A client that accepts zstd is a diskvault agent, which decompresses within the raw length and checks
      // SHA-256 against the id before using a chunk: hashing here as well would only double the work, so it
      // gets the stored payload after structural checks. Any other client gets bytes the engine has verified.
      const zstdOk = acceptsZstd(req);
      let chunk: ChunkLease;
      try {
        // The agent's payload is lent: its memory is reused for another read once the response is sent.
        chunk = zstdOk
          ? await repo.leaseStoredChunkUnverified(id)
          : { ...(await repo.readStoredChunk(id)), release: () => {} };
      } catch (err) {
        if (isDiskvaultError(err) && err.code === 'NotFound') throw notFound(id);
        throw err;
      }
      let body = chunk.payload;
      try {
        if (chunk.encoding === 'zstd') {
          if (zstdOk) res.setHeader('content-encoding', 'zstd');
          // The engine has checked the payload against the id, so its size is bounded by the raw length.
          else body = decompress(chunk.payload);
        }
        res.statusCode = 200;
        // A sealed chunk goes out as stored: only its key's holder can open it (docs/security.md).
        res.setHeader(
          'content-type',
          chunk.encoding === 'sealed' ? SEALED_CHUNK_CONTENT_TYPE : CHUNK_CONTENT_TYPE,
        );
        res.setHeader('content-length', body.length);
        res.setHeader(RAW_LENGTH_HEADER, chunk.rawLength);
        res.setHeader('vary', 'accept-encoding');
      } catch (err) {
        chunk.release(true);
        throw err;
      }
      // 'finish': every byte is with the kernel. A response cut off before that may leave the body queued
      // on a dying socket, so its memory is not reused (release is idempotent: the first call decides).
      res.once('finish', () => chunk.release(true));
      res.once('close', () => chunk.release(false));
      // A client gone while the chunk was read: 'close' has fired already and will not again.
      if (res.destroyed) chunk.release(false);
      res.end(body);
    }),
  );
}

/** The largest damage report body: MAX_DAMAGE_REPORTS chunks, each with a detail of 500 characters. */
const DAMAGE_REPORT_BYTES = 1024 * 1024;

/** The body of a damage report, checked: 1 to MAX_DAMAGE_REPORTS chunks, each an id and what was found. */
function checkDamageReports(body: unknown): DamageReportRequest['chunks'] {
  const { chunks } = asObject(body) as { chunks?: unknown };
  if (!Array.isArray(chunks) || chunks.length === 0 || chunks.length > MAX_DAMAGE_REPORTS)
    throw new InvalidInputError(`chunks must list 1 to ${MAX_DAMAGE_REPORTS} damaged chunks`);
  return chunks.map((c) => {
    const { id, detail } = asObject(c) as { id?: unknown; detail?: unknown };
    if (typeof detail !== 'string' || detail.length > 500)
      throw new InvalidInputError(
        'each damaged chunk needs a detail: what was found, at most 500 characters',
      );
    return { id: checkId(id, 'chunk id'), detail };
  });
}
