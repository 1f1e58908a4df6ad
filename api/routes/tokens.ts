import type { Server } from 'restify';
import { ConflictError, InvalidInputError, NotFoundError } from '../../common/errors.js';
import { isGlobalAdmin, type Principal, requireAdmin } from '../auth.js';
import { readJson } from '../body.js';
import { type ApiContext, param, route, sendJson, sendNoContent } from '../context.js';
import { forbidden } from '../errors.js';
import {
  ALL_TENANTS,
  createToken,
  type Role,
  readTokens,
  revokeToken,
  type TokenRecord,
} from '../token-store.js';
import { asObject, checkName } from '../validation.js';

/** A token as the API shows it: everything but the hash of its secret. */
export type TokenInfo = Omit<TokenRecord, 'hash'>;

/** Roles the API hands out; the token file may know more, which stay CLI-only. */
const CREATABLE_ROLES: readonly Role[] = ['agent', 'admin'];
const TOKEN_ID = /^[0-9a-f]{16}$/;

const describe = ({ hash: _hash, ...rest }: TokenRecord): TokenInfo => rest;

/** A tenant admin manages its own tenant's tokens only; a global admin every token. */
const mayManage = (p: Principal, t: TokenRecord) => isGlobalAdmin(p) || t.tenant === p.tenant;

/**
 * Token management over HTTP, the same operations as `diskvault token` on the server machine and through the
 * same locked writes of tokens.json. The secret of a new token is in the creation answer and nowhere else.
 */
export function registerTokenRoutes(server: Server, ctx: ApiContext): void {
  const dataDir = ctx.tokens.dataDir;

  server.get(
    '/v1/tokens',
    route(ctx, async (_req, res, p) => {
      requireAdmin(p);
      const tokens = ((await readTokens(dataDir)) ?? []).filter((t) => mayManage(p, t)).map(describe);
      sendJson(res, 200, { tokens });
    }),
  );

  server.post(
    '/v1/tokens',
    route(ctx, async (req, res, p) => {
      requireAdmin(p);
      const body = asObject(await readJson(req));
      const role = body.role;
      if (typeof role !== 'string' || !CREATABLE_ROLES.includes(role as Role))
        throw new InvalidInputError(`role must be one of ${CREATABLE_ROLES.join(', ')}`);
      if (body.hosts !== undefined && !Array.isArray(body.hosts))
        throw new InvalidInputError('hosts must be an array of host names');
      const hosts = ((body.hosts as unknown[] | undefined) ?? []).map((h) => checkName(h, 'host'));
      let tenant: string;
      if (isGlobalAdmin(p)) {
        // A global admin names the tenant; without one an admin token is global, an agent's is 'default'.
        if (body.tenant === undefined || body.tenant === '')
          tenant = role === 'admin' ? ALL_TENANTS : 'default';
        else if (body.tenant === ALL_TENANTS && role === 'admin') tenant = ALL_TENANTS;
        else tenant = checkName(body.tenant, 'tenant');
      } else {
        if (body.tenant !== undefined && body.tenant !== '' && body.tenant !== p.tenant)
          throw forbidden(`this token may only create tokens of tenant ${p.tenant}`);
        tenant = p.tenant;
      }
      const { record, token } = await createToken(dataDir, { role: role as Role, hosts, tenant });
      sendJson(res, 201, { token: describe(record), secret: token });
    }),
  );

  server.del(
    '/v1/tokens/:id',
    route(ctx, async (req, res, p) => {
      requireAdmin(p);
      const id = param(req, 'id');
      if (!TOKEN_ID.test(id)) throw new InvalidInputError('token id must be 16 lowercase hex characters');
      // Revoking the token in use would lock its holder out mid-session; another admin token can do it.
      if (id === p.tokenId)
        throw new ConflictError('this is the token making the request; revoke it with another one');
      const found = ((await readTokens(dataDir)) ?? []).find((t) => t.id === id);
      // Another tenant's token reads as absent, like another tenant's snapshot.
      if (!found || !mayManage(p, found)) throw new NotFoundError(`no token with id ${id}`);
      await revokeToken(dataDir, id);
      sendNoContent(res);
    }),
  );
}
