import type { IncomingMessage } from 'node:http';
import type { SnapshotInfo } from '../repo-engine/types.js';
import { forbidden, unauthorized } from './errors.js';
import { ALL_TENANTS, DEFAULT_TENANT, type Role, type TokenStore } from './token-store.js';

/**
 * Who is calling and what they may touch. 401 means "we do not know you" (no, malformed or revoked token);
 * 403 means "we know you, and this is not yours". Where even a 403 would reveal that something exists
 * (another host's snapshot, another tenant's chunk), the routes answer 404 as for a truly absent thing.
 */
export interface Principal {
  tokenId: string;
  role: Role;
  hosts: string[];
  /** '*' for a global admin. */
  tenant: string;
}

export function authenticate(req: IncomingMessage, tokens: TokenStore): Principal {
  const header = req.headers.authorization;
  const m = header ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null;
  if (!m) throw unauthorized('missing bearer token (Authorization: Bearer dv_...)');
  const record = tokens.authenticate(m[1]);
  if (!record) throw unauthorized();
  return { tokenId: record.id, role: record.role, hosts: record.hosts, tenant: record.tenant };
}

export const isGlobalAdmin = (p: Principal) => p.role === 'admin' && p.tenant === ALL_TENANTS;

/** A reader sees what an admin of its tenant (or, global, of every tenant) sees, and changes nothing. */
export const isReader = (p: Principal) => p.role === 'reader';

/** Sees every host's snapshots of its tenant (or of every tenant): an admin or a reader, not an agent. */
export const seesAllHosts = (p: Principal) => p.role === 'admin' || p.role === 'reader';

/** Backing up (sessions, uploads, commits) is for agents and admins; a reader token never writes. */
export function requireWriter(p: Principal): void {
  if (p.role === 'reader') throw forbidden('a reader token cannot write to the repository');
}

export function requireAdmin(p: Principal): void {
  if (p.role !== 'admin') throw forbidden('this needs an admin token');
}

export function requireGlobalAdmin(p: Principal): void {
  if (!isGlobalAdmin(p)) throw forbidden('this needs a global admin token (tenant *)');
}

/** Hosts to back up: agents only their own; admins any; readers none. */
export function mayUseHost(p: Principal, host: string): boolean {
  return p.role === 'admin' || (p.role === 'agent' && p.hosts.includes(host));
}

/**
 * The tenant a new session belongs to: a global admin backs up into the default tenant, or into the one it
 * asks for (an offsite copy keeps each snapshot's tenant); every other token into its own.
 */
export function sessionTenant(p: Principal, requested?: string): string {
  const own = p.tenant === ALL_TENANTS ? DEFAULT_TENANT : p.tenant;
  if (requested === undefined || requested === own) return own;
  if (isGlobalAdmin(p)) return requested;
  throw forbidden(`this token may not write into tenant ${requested}`);
}

/** The tenant whose data a principal may read; undefined means every tenant. */
export function tenantScope(p: Principal): string | undefined {
  return p.tenant === ALL_TENANTS ? undefined : p.tenant;
}

export function maySeeSnapshot(p: Principal, s: SnapshotInfo): boolean {
  if (seesAllHosts(p) && p.tenant === ALL_TENANTS) return true;
  if (s.tenant !== p.tenant) return false;
  return seesAllHosts(p) || p.hosts.includes(s.host);
}
