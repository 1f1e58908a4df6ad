import type { Server } from 'restify';
import { InvalidInputError, NotFoundError } from '../../common/errors.js';
import { isGlobalAdmin, maySeeSnapshot, type Principal } from '../auth.js';
import { readJson } from '../body.js';
import { type ApiContext, param, route, sendJson } from '../context.js';
import { forbidden } from '../errors.js';
import { serveImage } from '../image/serve-image.js';
import type { ShareInfo } from '../protocol.js';
import { refuseSealedSnapshot } from '../sealed-snapshots.js';
import { type ShareRecord, ShareStore } from '../share-store.js';
import { asObject, checkId } from '../validation.js';

/** A link lives at most this long: long enough for a restore and a VM run meanwhile, short enough to lapse. */
export const MAX_SHARE_SECONDS = 30 * 24 * 3600;

/** The one answer for a link that is unknown, malformed, expired, revoked or whose snapshot is gone. */
const noSuchLink = () => new NotFoundError('no such share link');

/** A link's fields as the API shows them: never its hash. */
function publicShare(r: ShareRecord): ShareInfo {
  return {
    id: r.id,
    snapshot: r.snapshot,
    host: r.host,
    disk: r.disk,
    created: r.created,
    expires: r.expires,
    createdBy: r.createdBy,
  };
}

/** Admins see their tenant's links (a global admin all); an agent those of its own hosts. */
function maySeeShare(p: Principal, r: ShareRecord): boolean {
  if (isGlobalAdmin(p)) return true;
  if (r.tenant !== p.tenant) return false;
  return p.role === 'admin' || p.hosts.includes(r.host);
}

/**
 * Share links: POST/GET /v1/shares and DELETE /v1/shares/:id manage them (with a token); GET and HEAD
 * /v1/share/:link/image serve the snapshot's image to anyone holding the link, no token, until it expires.
 * Who may create one: a token that may read the snapshot and is an admin (its tenant's snapshots) or an
 * agent (its own hosts' snapshots). A link hands out nothing its creator could not already download.
 */
export function registerShareRoutes(server: Server, ctx: ApiContext): void {
  const shares = new ShareStore(ctx.tokens.dataDir);

  server.post(
    '/v1/shares',
    route(ctx, async (req, res, p) => {
      if (p.role !== 'admin' && p.role !== 'agent') throw forbidden('this token may not create share links');
      const body = asObject(await readJson(req));
      const id = checkId(body.snapshot, 'snapshot');
      const seconds = body.expiresInSeconds;
      if (
        typeof seconds !== 'number' ||
        !Number.isInteger(seconds) ||
        seconds < 60 ||
        seconds > MAX_SHARE_SECONDS
      )
        throw new InvalidInputError(
          `expiresInSeconds must be a whole number from 60 to ${MAX_SHARE_SECONDS} (30 days)`,
        );
      const snap = ctx.repo.getSnapshot(id);
      if (!snap || !maySeeSnapshot(p, snap)) throw new NotFoundError(`snapshot ${id} not found`);
      refuseSealedSnapshot(snap, 'a share link to it');
      const { record, link } = await shares.create({
        snapshot: snap.id,
        host: snap.host,
        disk: snap.disk,
        tenant: snap.tenant,
        expires: new Date(Date.now() + seconds * 1000).toISOString(),
        createdBy: p.tokenId,
      });
      ctx.log(
        JSON.stringify({ level: 'info', msg: 'share link created', share: record.id, snapshot: snap.id }),
      );
      sendJson(res, 201, { share: publicShare(record), path: `/v1/share/${link}/image` });
    }),
  );

  server.get(
    '/v1/shares',
    route(ctx, async (_req, res, p) => {
      const list = shares
        .list()
        .filter((r) => maySeeShare(p, r))
        .sort((a, b) => a.created.localeCompare(b.created));
      sendJson(res, 200, { shares: list.map(publicShare) });
    }),
  );

  server.del(
    '/v1/shares/:id',
    route(ctx, async (req, res, p) => {
      const id = param(req, 'id');
      const found = /^[0-9a-f]{16}$/.test(id) ? shares.get(id) : undefined;
      if (!found || !maySeeShare(p, found)) throw new NotFoundError(`no share link with id ${id}`);
      const record = await shares.revoke(id);
      ctx.log(JSON.stringify({ level: 'info', msg: 'share link revoked', share: record.id }));
      sendJson(res, 200, { share: publicShare(record) });
    }),
  );

  const image = route(
    ctx,
    async (req, res) => {
      const record = shares.resolve(param(req, 'link'));
      // The snapshot may have been forgotten since: the link then fails like any dead link.
      const snap = record ? ctx.repo.getSnapshot(record.snapshot) : undefined;
      if (!record || !snap || snap.tenant !== record.tenant) throw noSuchLink();
      await serveImage(ctx.repo, snap, req, res);
    },
    { auth: false },
  );
  server.get('/v1/share/:link/image', image);
  server.head('/v1/share/:link/image', image);
}
