import type { Server } from 'restify';
import { NotFoundError } from '../../common/errors.js';
import { maySeeSnapshot } from '../auth.js';
import { type ApiContext, param, route } from '../context.js';
import { serveImage } from '../image/serve-image.js';
import { checkId } from '../validation.js';

/**
 * GET and HEAD /v1/snapshots/:id/image: the snapshot as a raw disk image, for `curl | dd`, `qemu-img
 * convert` and anything else that reads HTTP with Range. Whoever may read the snapshot may read its image.
 */
export function registerImageRoutes(server: Server, ctx: ApiContext): void {
  const handler = route(ctx, async (req, res, p) => {
    const id = checkId(param(req, 'id'), 'snapshot id');
    const snap = ctx.repo.getSnapshot(id);
    // Another host's or tenant's snapshot reads as absent: its id must not be confirmable.
    if (!snap || !maySeeSnapshot(p, snap)) throw new NotFoundError(`snapshot ${id} not found`);
    await serveImage(ctx.repo, snap, req, res);
  });
  server.get('/v1/snapshots/:id/image', handler);
  server.head('/v1/snapshots/:id/image', handler);
}
