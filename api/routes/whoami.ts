import type { Server } from 'restify';
import { type ApiContext, route, sendJson } from '../context.js';

/** GET /v1/whoami answer: what the calling token is, so a client (the web console) can shape itself. */
export interface WhoamiResponse {
  tokenId: string;
  role: string;
  /** '*' for a global admin. */
  tenant: string;
  /** The hosts an agent token is scoped to; empty otherwise. */
  hosts: string[];
}

/** Read-only: the caller's own token, never another's and never a secret. */
export function registerWhoamiRoute(server: Server, ctx: ApiContext): void {
  server.get(
    '/v1/whoami',
    route(ctx, async (_req, res, p) => {
      const out: WhoamiResponse = { tokenId: p.tokenId, role: p.role, tenant: p.tenant, hosts: p.hosts };
      sendJson(res, 200, out);
    }),
  );
}
