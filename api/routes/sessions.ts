import type { Server } from 'restify';
import { InvalidInputError, isDiskvaultError } from '../../common/errors.js';
import { mayUseHost, sessionTenant } from '../auth.js';
import { capped, readCapped, readJson, refuseDeclaredOver } from '../body.js';
import { type ApiContext, param, route, sendJson, sendNoContent } from '../context.js';
import { forbidden } from '../errors.js';
import {
  type CommitResponse,
  type CreateSessionResponse,
  ID_BYTES,
  IDS_CONTENT_TYPE,
  MANIFEST_CONTENT_TYPE,
  MAX_MISSING_IDS,
  type MissingResponse,
} from '../protocol.js';
import { asObject, checkIdList, checkName, checkSessionId } from '../validation.js';

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
      const body = asObject(await readJson(req));
      const host = checkName(body.host, 'host');
      const disk = checkName(body.disk, 'disk');
      if (!mayUseHost(p, host)) throw forbidden(`this token may not back up host ${host}`);
      const tenant = sessionTenant(p);
      const info = await repo.beginSession(host, disk, tenant);
      sessions.bind(info.id, p, info);
      // The previous snapshot seeds the agent's known-set; one from another tenant would only cause uploads
      // it cannot skip, and would reveal that tenant's data.
      const previous = info.previous && info.previous.tenant === tenant ? info.previous : null;
      const out: CreateSessionResponse = {
        id: info.id,
        chunker: info.chunker,
        expiresAt: info.expiresAt,
        previous,
      };
      sendJson(res, 201, out);
    }),
  );

  server.post(
    '/v1/sessions/:id/missing',
    route(ctx, async (req, res, p) => {
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
      const ids = checkIdList(asObject(await readJson(req)).ids);
      touch(sid);
      const out: MissingResponse = { missing: await repo.filterMissing(sid, ids) };
      sendJson(res, 200, out);
    }),
  );

  server.post(
    '/v1/sessions/:id/commit',
    route(ctx, async (req, res, p) => {
      const sid = checkSessionId(param(req, 'id'));
      sessions.require(sid, p);
      const type = req.headers['content-type'];
      if (!type || type.split(';')[0].trim().toLowerCase() !== MANIFEST_CONTENT_TYPE) {
        throw new InvalidInputError(`a commit body must be ${MANIFEST_CONTENT_TYPE}`);
      }
      refuseDeclaredOver(req, ctx.maxManifestBytes, 'manifest');
      touch(sid);
      const snapshot = await repo.commit(sid, capped(req, ctx.maxManifestBytes, 'manifest'));
      sessions.forget(sid);
      ctx.metrics.commits++;
      const out: CommitResponse = { snapshot };
      sendJson(res, 201, out);
    }),
  );

  server.del(
    '/v1/sessions/:id',
    route(ctx, async (req, res, p) => {
      const sid = checkSessionId(param(req, 'id'));
      sessions.require(sid, p);
      await repo.abort(sid);
      sessions.forget(sid);
      sendNoContent(res);
    }),
  );
}

function isIdsBody(type: string | undefined): boolean {
  return type !== undefined && type.split(';')[0].trim().toLowerCase() === IDS_CONTENT_TYPE;
}
