import type { Server } from 'restify';
import { CHUNK_STREAM_PROTOCOL } from '../../common/chunk-stream.js';
import { DiskvaultError, InvalidInputError, isDiskvaultError } from '../../common/errors.js';
import { keyIdOfProof } from '../../repo-engine/sealed-chunk.js';
import type { SessionKey } from '../../repo-engine/types.js';
import { isGlobalAdmin, mayUseHost, requireAdmin, requireWriter, sessionTenant } from '../auth.js';
import { capped, readCapped, readJson, refuseDeclaredOver } from '../body.js';
import { type ApiContext, param, query, route, sendJson, sendNoContent } from '../context.js';
import { forbidden } from '../errors.js';
import { readJsonMissingQuery } from '../missing-query.js';
import {
  type CommitResponse,
  type CreateSessionResponse,
  ID_BYTES,
  IDS_CONTENT_TYPE,
  MANIFEST_CONTENT_TYPE,
  MAX_MISSING_IDS,
  type MissingResponse,
} from '../protocol.js';
import { asObject, checkId, checkName, checkSessionId, optionalName } from '../validation.js';

/** Upload sessions: open, ask which chunks are missing, commit the manifest, or abort. */
export function registerSessionRoutes(server: Server, ctx: ApiContext): void {
  const { repo, sessions } = ctx;

  /** The session, renewed; an engine-side expiry drops the binding too. */
  const touch = (sessionId: string) => {
    try {
      const info = repo.touchSession(sessionId);
      sessions.renewed(sessionId, info.expiresAt);
      return info;
    } catch (err) {
      if (isDiskvaultError(err) && err.code === 'NotFound') sessions.forget(sessionId);
      throw err;
    }
  };

  server.post(
    '/v1/sessions',
    route(ctx, async (req, res, p) => {
      requireWriter(p);
      const body = asObject(await readJson(req));
      const host = checkName(body.host, 'host');
      const disk = checkName(body.disk, 'disk');
      if (!mayUseHost(p, host)) throw forbidden(`this token may not back up host ${host}`);
      const tenant = sessionTenant(p, optionalName(body.tenant, 'tenant'));
      const key = sessionKey(body.e2e, isGlobalAdmin(p));
      const place = sessions.reserve(p.tokenId, ctx.maxSessionsPerToken, repo.now());
      if ('retryAfterS' in place) {
        res.setHeader('retry-after', String(place.retryAfterS));
        throw new DiskvaultError(
          'TooManyRequests',
          `this token already has ${ctx.maxSessionsPerToken} open upload sessions (the server's --max-sessions-per-token); finish or abort one, or wait for one to expire`,
          { limit: ctx.maxSessionsPerToken },
        );
      }
      let info: Awaited<ReturnType<typeof repo.beginSession>>;
      try {
        info = await repo.beginSession(host, disk, tenant, key);
        sessions.bind(info.id, p, info);
      } finally {
        place.release();
      }
      // The previous snapshot seeds the agent's known-set; one from another tenant would only cause uploads
      // it cannot skip, and would reveal that tenant's data.
      const previous = info.previous && info.previous.tenant === tenant ? info.previous : null;
      const out: CreateSessionResponse = {
        id: info.id,
        chunker: info.chunker,
        expiresAt: info.expiresAt,
        previous,
        ...(ctx.chunkStream !== false ? { chunkStream: CHUNK_STREAM_PROTOCOL } : {}),
        ...(key ? { keyId: key.keyId } : {}),
      };
      sendJson(res, 201, out);
    }),
  );

  server.post(
    '/v1/sessions/:id/missing',
    route(ctx, async (req, res, p) => {
      requireWriter(p);
      const sid = checkSessionId(param(req, 'id'));
      sessions.require(sid, p);
      if (isIdsBody(req.headers['content-type'])) {
        const ids = await readCapped(req, MAX_MISSING_IDS * ID_BYTES, 'missing query');
        if (ids.length % ID_BYTES !== 0)
          throw new InvalidInputError(`a binary missing query is whole ${ID_BYTES}-byte ids`);
        touch(sid);
        const missing = await repo.filterMissingBinary(sid, ids);
        res.statusCode = 200;
        res.setHeader('content-type', IDS_CONTENT_TYPE);
        res.setHeader('content-length', missing.length);
        res.end(missing);
        return;
      }
      const ids = await readJsonMissingQuery(req);
      touch(sid);
      const missing = await repo.filterMissingBinary(sid, ids);
      const out: MissingResponse = { missing: [] };
      for (let at = 0; at < missing.length; at += ID_BYTES)
        out.missing.push(missing.toString('hex', at, at + ID_BYTES));
      sendJson(res, 200, out);
    }),
  );

  server.post(
    '/v1/sessions/:id/commit',
    route(ctx, async (req, res, p) => {
      requireWriter(p);
      const sid = checkSessionId(param(req, 'id'));
      // ?id= keeps the id another repository gave a snapshot (a copy). Only an admin may choose an id: an
      // agent could otherwise squat on ids a copy will bring.
      const keepId = query(req).get('id') ?? undefined;
      if (keepId !== undefined) {
        requireAdmin(p);
        checkId(keepId, 'snapshot id');
      }
      sessions.require(sid, p);
      const type = req.headers['content-type'];
      if (!type || type.split(';')[0].trim().toLowerCase() !== MANIFEST_CONTENT_TYPE) {
        throw new InvalidInputError(`a commit body must be ${MANIFEST_CONTENT_TYPE}`);
      }
      refuseDeclaredOver(req, ctx.maxManifestBytes, 'manifest');
      touch(sid);
      // Only an admin may commit a time from before the backup (an import); see repo-engine/snapshot-time.ts.
      const snapshot = await ctx.commits
        .run(() =>
          repo.commit(sid, capped(req, ctx.maxManifestBytes, 'manifest'), {
            mayBackdate: p.role === 'admin',
            ...(keepId !== undefined ? { id: keepId } : {}),
          }),
        )
        .catch((err: unknown) => {
          const retry = (err as { details?: { retryAfterSeconds?: unknown } }).details?.retryAfterSeconds;
          if (typeof retry === 'number') res.setHeader('retry-after', String(retry));
          throw err;
        });
      sessions.forget(sid);
      ctx.metrics.commits++;
      const out: CommitResponse = { snapshot };
      sendJson(res, 201, out);
    }),
  );

  server.del(
    '/v1/sessions/:id',
    route(ctx, async (req, res, p) => {
      requireWriter(p);
      const sid = checkSessionId(param(req, 'id'));
      sessions.require(sid, p);
      await repo.abort(sid);
      sessions.forget(sid);
      sendNoContent(res);
    }),
  );
}

/**
 * The end-to-end key of a new session: the key id its proof hashes to (a holder of the key proves it so);
 * a global admin (the operator's own token, who could change storage anyway) may name the key id itself,
 * to copy sealed snapshots it cannot open. Undefined: plaintext.
 */
function sessionKey(value: unknown, isAdmin: boolean): SessionKey | undefined {
  if (value === undefined || value === null) return undefined;
  const o = asObject(value);
  if (typeof o.proof === 'string') {
    const proof = Buffer.from(o.proof, 'base64');
    if (proof.length !== 32 || proof.toString('base64') !== o.proof)
      throw new InvalidInputError('e2e.proof is 32 bytes in base64');
    return { keyId: keyIdOfProof(proof) };
  }
  if (typeof o.keyId === 'string') {
    if (!isAdmin)
      throw forbidden('only an admin may open an end-to-end session by key id; agents send e2e.proof');
    if (!/^[0-9a-f]{32}$/.test(o.keyId))
      throw new InvalidInputError('e2e.keyId is 32 lowercase hex characters');
    return { keyId: o.keyId };
  }
  throw new InvalidInputError('e2e needs a proof (base64) or, for an admin, a keyId');
}

function isIdsBody(type: string | undefined): boolean {
  return type !== undefined && type.split(';')[0].trim().toLowerCase() === IDS_CONTENT_TYPE;
}
