import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { CorruptError, NotFoundError } from '../common/errors.js';
import { writeFileAtomic } from './atomic-file.js';
import { FileWatchCache } from './file-watch-cache.js';
import { hashSecret, secretMatches } from './secret-hash.js';

/**
 * Share links, kept in `<data>/shares.json` (mode 0600, replaced atomically): a link serves one snapshot's
 * image to whoever holds its URL, without a token, until it expires or is revoked. The URL carries
 * `<id>_<secret>`: the id (16 hex) is public (listed, logged, used to revoke), the secret is 32 random bytes
 * (256 bits, 64 hex) of which only the SHA-256 is stored, so the file (or a backup of the data folder)
 * holds no usable link. Like tokens.json, the file is the only record: links survive restarts and a lost
 * index, and a manual edit is picked up (one stat per use).
 */
export interface ShareRecord {
  id: string;
  /** sha256(secret), hex. */
  hash: string;
  snapshot: string;
  /** Copied from the snapshot at creation, for listing and for deciding who sees the link. */
  host: string;
  disk: string;
  tenant: string;
  /** ISO 8601. */
  created: string;
  /** ISO 8601: the link answers 404 from this moment on. */
  expires: string;
  /** The id of the token that created it. */
  createdBy: string;
}

interface ShareFile {
  version: 1;
  shares: ShareRecord[];
}

/** What goes into a share URL's path: `<id>_<secret>`. */
export const SHARE_LINK_PATTERN = /^([0-9a-f]{16})_([0-9a-f]{64})$/;

export function sharesPath(dataDir: string): string {
  return join(dataDir, 'shares.json');
}

export class ShareStore {
  private readonly file: FileWatchCache<Map<string, ShareRecord>>;
  /** Writes in this process, one at a time: the server is the only writer of shares.json. */
  private writing: Promise<unknown> = Promise.resolve();

  constructor(
    readonly dataDir: string,
    private readonly now: () => number = Date.now,
  ) {
    this.file = new FileWatchCache(
      sharesPath(dataDir),
      (text, path) => new Map(parseFile(text, path).map((s) => [s.id, s])),
      () => new Map(),
    );
  }

  get path(): string {
    return sharesPath(this.dataDir);
  }

  /** The live link a URL names; undefined for anything malformed, unknown, revoked or expired. */
  resolve(link: string): ShareRecord | undefined {
    const m = SHARE_LINK_PATTERN.exec(link);
    if (!m) return undefined;
    const record = this.current().get(m[1]);
    if (!record) return undefined;
    if (!secretMatches(record.hash, m[2] as string)) return undefined;
    if (Date.parse(record.expires) <= this.now()) return undefined;
    return record;
  }

  /** Every link not yet expired. */
  list(): ShareRecord[] {
    const now = this.now();
    return [...this.current().values()].filter((r) => Date.parse(r.expires) > now);
  }

  get(id: string): ShareRecord | undefined {
    return this.current().get(id);
  }

  /** Creates a link and returns its record and the `<id>_<secret>` for the URL, which exists nowhere else. */
  create(spec: Omit<ShareRecord, 'id' | 'hash' | 'created'>): Promise<{ record: ShareRecord; link: string }> {
    const id = randomBytes(8).toString('hex');
    const secret = randomBytes(32).toString('hex');
    const record: ShareRecord = {
      id,
      hash: hashSecret(secret),
      snapshot: spec.snapshot,
      host: spec.host,
      disk: spec.disk,
      tenant: spec.tenant,
      created: new Date(this.now()).toISOString(),
      expires: spec.expires,
      createdBy: spec.createdBy,
    };
    return this.update((shares) => [...shares, record]).then(() => ({ record, link: `${id}_${secret}` }));
  }

  revoke(id: string): Promise<ShareRecord> {
    let found: ShareRecord | undefined;
    return this.update((shares) => {
      found = shares.find((s) => s.id === id);
      if (!found) throw new NotFoundError(`no share link with id ${id}`);
      return shares.filter((s) => s.id !== id);
    }).then(() => found as ShareRecord);
  }

  /** Read-modify-write of the file; expired links are dropped on the way (they answer 404 anyway). */
  private update(change: (shares: ShareRecord[]) => ShareRecord[]): Promise<void> {
    const run = this.writing.then(async () => {
      const now = this.now();
      const shares = change([...this.current().values()]).filter((s) => Date.parse(s.expires) > now);
      const file: ShareFile = { version: 1, shares };
      await writeFileAtomic(this.path, `${JSON.stringify(file, null, 2)}\n`, 0o600);
      this.file.invalidate();
    });
    this.writing = run.catch(() => {});
    return run;
  }

  private current(): Map<string, ShareRecord> {
    return this.file.current();
  }
}

function parseFile(text: string, path: string): ShareRecord[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new CorruptError(`${path} is not valid JSON`);
  }
  const shares = (parsed as Partial<ShareFile> | null)?.shares;
  if (!Array.isArray(shares)) throw new CorruptError(`${path} has no "shares" array`);
  return shares as ShareRecord[];
}
