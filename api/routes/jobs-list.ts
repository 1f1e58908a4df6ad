import type { Server } from 'restify';
import { InvalidInputError } from '../../common/errors.js';
import { isGlobalAdmin, requireAdmin } from '../auth.js';
import { type ApiContext, query, route, sendJson } from '../context.js';
import type { JobInfo } from '../protocol.js';

/**
 * GET /v1/jobs[?kind=verify]: the jobs this server remembers (running, and the newest finished ones), newest
 * first, so a client can find the last verify's result without having kept its id. A tenant admin sees
 * only the jobs it started, as with GET /v1/jobs/:id.
 */
export function registerJobListRoute(server: Server, ctx: ApiContext): void {
  server.get(
    '/v1/jobs',
    route(ctx, async (req, res, p) => {
      requireAdmin(p);
      const kind = query(req).get('kind');
      if (kind !== null && !/^[a-z]{1,32}$/.test(kind))
        throw new InvalidInputError('kind must be a job kind');
      const jobs: JobInfo[] = ctx.jobs
        .list()
        .filter((j) => (isGlobalAdmin(p) || j.tokenId === p.tokenId) && (kind === null || j.kind === kind))
        .map(({ tokenId: _owner, ...rest }) => rest as JobInfo);
      sendJson(res, 200, { jobs });
    }),
  );
}
