import { randomBytes } from 'node:crypto';
import { open, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { DiskvaultError, InvalidInputError, NotFoundError } from '../common/errors.js';
import { checkName } from '../common/names.js';
import { writeFileAtomic } from './atomic-file.js';
import { FileWatchCache } from './file-watch-cache.js';
import { hashSecret, secretMatches } from './secret-hash.js';

/**
 * API tokens, kept in `<data>/tokens.json`. Only a SHA-256 of each secret is stored, so the file leaks no
 * usable token. The server re-reads the file whenever its mtime, size or inode changes (one stat per
 * authentication), so `diskvault token create/revoke` on the server machine takes effect without a restart.
 *
 * A bearer token reads `dv_<id>_<secret>`: id 16 hex (public, logged), secret 64 hex (never logged).
 */
export type Role = 'agent' | 'admin' | 'reader';
/** Every role, as `diskvault token create --role` accepts them. */
export const ROLES: readonly Role[] = ['agent', 'admin', 'reader'];
/** The tenant of a global admin: every tenant. */
export const ALL_TENANTS = '*';
export const DEFAULT_TENANT = 'default';

export interface TokenRecord {
  id: string;
  role: Role;
  /** Hosts an agent token may back up and restore; empty for admins and readers. */
  hosts: string[];
  /** The dedup domain; '*' only for a global admin or a global reader. */
  tenant: string;
  /** ISO 8601. */
  created: string;
  /** sha256(secret), hex. */
  hash: string;
}

interface TokenFile {
  version: 1;
  tokens: TokenRecord[];
}

const TOKEN_PATTERN = /^dv_([0-9a-f]{16})_([0-9a-f]{64})$/;

export function tokensPath(dataDir: string): string {
  return join(dataDir, 'tokens.json');
}

export function validateTenant(tenant: string, allowAll: boolean): void {
  if (tenant === ALL_TENANTS && allowAll) return;
  checkName('tenant name', tenant);
}

function parseFile(text: string, path: string): TokenFile {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new InvalidInputError(`${path} is not valid JSON`);
  }
  const tokens = (parsed as Partial<TokenFile> | null)?.tokens;
  if (!Array.isArray(tokens)) throw new InvalidInputError(`${path} has no "tokens" array`);
  return { version: 1, tokens: tokens as TokenRecord[] };
}

/** The read side, used by the server on every request. */
export class TokenStore {
  private readonly file: FileWatchCache<Map<string, TokenRecord>>;

  constructor(readonly dataDir: string) {
    this.file = new FileWatchCache(
      tokensPath(dataDir),
      (text, path) => new Map(parseFile(text, path).tokens.map((t) => [t.id, t])),
      () => new Map(),
    );
  }

  get path(): string {
    return tokensPath(this.dataDir);
  }

  /** The token's record, or undefined for anything malformed, unknown or revoked. */
  authenticate(bearer: string): TokenRecord | undefined {
    const m = TOKEN_PATTERN.exec(bearer);
    if (!m) return undefined;
    const record = this.current().get(m[1]);
    if (!record) return undefined;
    if (!secretMatches(record.hash, m[2] as string)) return undefined;
    return record;
  }

  private current(): Map<string, TokenRecord> {
    return this.file.current();
  }
}

/** The write side, used by `diskvault token` and by the server's first start. */
export async function readTokens(dataDir: string): Promise<TokenRecord[] | undefined> {
  const path = tokensPath(dataDir);
  try {
    return parseFile(await readFile(path, 'utf8'), path).tokens;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

async function writeTokens(dataDir: string, tokens: TokenRecord[]): Promise<void> {
  const file: TokenFile = { version: 1, tokens };
  await writeFileAtomic(tokensPath(dataDir), `${JSON.stringify(file, null, 2)}\n`);
}

export interface NewToken {
  role: Role;
  hosts?: string[];
  tenant?: string;
}

/**
 * Serialises read-modify-write of tokens.json across processes (two `diskvault token create` at once must
 * not lose one): an exclusive lock file, retried briefly; a lock older than a minute is a crashed writer's.
 */
async function withTokensLock<T>(dataDir: string, fn: () => Promise<T>): Promise<T> {
  const lock = `${tokensPath(dataDir)}.lock`;
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      await (await open(lock, 'wx', 0o600)).close();
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const st = await stat(lock).catch(() => undefined);
      if (st && Date.now() - st.mtimeMs > 60_000) await rm(lock, { force: true });
      else if (Date.now() > deadline)
        throw new DiskvaultError('Unavailable', `${lock} is held by another token command`);
      else await new Promise((r) => setTimeout(r, 5 + Math.random() * 20));
    }
  }
  try {
    return await fn();
  } finally {
    await rm(lock, { force: true });
  }
}

/** Creates a token and returns its record and the bearer string, which exists nowhere else afterwards. */
export async function createToken(
  dataDir: string,
  spec: NewToken,
): Promise<{ record: TokenRecord; token: string }> {
  const hosts = [...new Set(spec.hosts ?? [])];
  for (const h of hosts) {
    checkName('host name', h);
  }
  if (spec.role === 'agent' && hosts.length === 0)
    throw new InvalidInputError('an agent token needs at least one --host');
  if (!ROLES.includes(spec.role)) throw new InvalidInputError(`unknown role ${JSON.stringify(spec.role)}`);
  if (spec.role !== 'agent' && hosts.length > 0)
    throw new InvalidInputError(
      `${spec.role === 'admin' ? 'an admin' : 'a reader'} token is not scoped to hosts`,
    );
  // Admins and readers see every tenant unless given one; an agent belongs to one tenant.
  const tenant = spec.tenant ?? (spec.role === 'agent' ? DEFAULT_TENANT : ALL_TENANTS);
  validateTenant(tenant, spec.role !== 'agent');
  const id = randomBytes(8).toString('hex');
  const secret = randomBytes(32).toString('hex');
  const record: TokenRecord = {
    id,
    role: spec.role,
    hosts,
    tenant,
    created: new Date().toISOString(),
    hash: hashSecret(secret),
  };
  await withTokensLock(dataDir, async () => {
    const tokens = (await readTokens(dataDir)) ?? [];
    tokens.push(record);
    await writeTokens(dataDir, tokens);
  });
  return { record, token: `dv_${id}_${secret}` };
}

export async function revokeToken(dataDir: string, id: string): Promise<TokenRecord> {
  return withTokensLock(dataDir, async () => {
    const tokens = (await readTokens(dataDir)) ?? [];
    const found = tokens.find((t) => t.id === id);
    if (!found) throw new NotFoundError(`no token with id ${id}`);
    await writeTokens(
      dataDir,
      tokens.filter((t) => t.id !== id),
    );
    return found;
  });
}
