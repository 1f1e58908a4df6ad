import { createReadStream } from 'node:fs';
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';

/**
 * An in-process S3 server (s3rver) for tests and benchmarks: real HTTP, real SigV4, real XML, so the S3
 * adapter is tested against a server rather than a mock. Each call gets its own temp directory and port.
 *
 * s3rver 3.7.1 gets three things wrong that real S3 gets right, and the adapter's contract tests depend on
 * them, so a small middleware in front answers those requests itself from s3rver's own files:
 * - ListObjectsV2 continuation tokens use DES, which Node 20's OpenSSL 3 refuses (HTTP 500 on page 2);
 * - listings come in directory order, not byte order of keys (and its start-after skipping then loses keys);
 * - `Range: bytes=0-0` returns the whole object;
 * - it writes an object straight into its final file, so concurrent PUTs of one key interleave. Writes of
 *   one key are serialised here (S3 itself makes each PUT atomic).
 */
export interface FakeS3 {
  endpoint: string;
  bucket: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
  stop(): Promise<void>;
}

// s3rver ships no type declarations; this is the little of it we use.
interface KoaContext {
  method: string;
  path: string;
  query: Record<string, string | string[] | undefined>;
  req: IncomingMessage;
  res: ServerResponse;
  respond: boolean;
}
interface S3rverInstance {
  middleware: ((ctx: KoaContext, next: () => Promise<void>) => Promise<void>)[];
  run(): Promise<AddressInfo>;
  close(): Promise<void>;
  httpServer?: Server;
}
type S3rverConstructor = new (options: Record<string, unknown>) => S3rverInstance;

const require = createRequire(import.meta.url);

export async function startFakeS3(bucket = 'diskvault-test'): Promise<FakeS3> {
  const S3rver = require('s3rver') as S3rverConstructor;
  const directory = await mkdtemp(path.join(os.tmpdir(), 'dv-fake-s3-'));
  const server = new S3rver({
    address: '127.0.0.1',
    port: 0,
    silent: true,
    directory,
    configureBuckets: [{ name: bucket }],
  });
  // Koa composes its middleware when the server starts, so this runs before s3rver's router.
  const writesInFlight = new Map<string, Promise<void>>();
  server.middleware.unshift(async (ctx, next) => {
    if (await answerListObjectsV2(ctx, directory, bucket)) return;
    if (await answerRangedGet(ctx, directory, bucket)) return;
    if (ctx.method === 'PUT' || ctx.method === 'POST') {
      await serialised(writesInFlight, ctx.path, next);
      return;
    }
    await next();
  });
  let address: AddressInfo;
  try {
    address = await server.run();
  } catch (err) {
    await rm(directory, { recursive: true, force: true });
    throw err;
  }
  let stopped = false;
  return {
    endpoint: `http://127.0.0.1:${address.port}`,
    bucket,
    region: 'us-east-1',
    // s3rver's built-in account; it checks signatures, so these must match.
    accessKeyId: 'S3RVER',
    secretAccessKey: 'S3RVER',
    async stop() {
      if (stopped) return;
      stopped = true;
      // Keep-alive sockets from the SDK would otherwise hold close() open.
      server.httpServer?.closeAllConnections();
      await server.close();
      await rm(directory, { recursive: true, force: true });
    },
  };
}

/** Runs `work` after every earlier write of the same path has finished. */
async function serialised(inFlight: Map<string, Promise<void>>, key: string, work: () => Promise<void>) {
  const previous = inFlight.get(key) ?? Promise.resolve();
  const mine = previous.then(work, work);
  const settled = mine.catch(() => {});
  inFlight.set(key, settled);
  try {
    await mine;
  } finally {
    if (inFlight.get(key) === settled) inFlight.delete(key);
  }
}

const OBJECT_SUFFIX = '._S3rver_object';

function objectPath(directory: string, bucket: string, key: string): string {
  return path.join(directory, bucket, `${key}${OBJECT_SUFFIX}`);
}

/** Every key in the bucket starting with `prefix`, in byte order, with size and mtime. */
async function keysUnder(directory: string, bucket: string, prefix: string) {
  const bucketDir = path.join(directory, bucket);
  const found: { key: string; size: number; mtime: Date }[] = [];
  const walk = async (dir: string, keyPrefix: string): Promise<void> => {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      if (entry.isDirectory()) {
        await walk(path.join(dir, entry.name), `${keyPrefix}${entry.name}/`);
      } else if (entry.name.endsWith(OBJECT_SUFFIX)) {
        const key = keyPrefix + entry.name.slice(0, -OBJECT_SUFFIX.length);
        if (!key.startsWith(prefix)) continue;
        const info = await stat(path.join(dir, entry.name)).catch(() => undefined);
        if (info) found.push({ key, size: info.size, mtime: info.mtime });
      }
    }
  };
  await walk(bucketDir, '');
  return found.sort((a, b) => Buffer.compare(Buffer.from(a.key), Buffer.from(b.key)));
}

function xmlEscape(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function one(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

async function answerListObjectsV2(ctx: KoaContext, directory: string, bucket: string): Promise<boolean> {
  if (
    ctx.method !== 'GET' ||
    ctx.path.replace(/\/$/, '') !== `/${bucket}` ||
    one(ctx.query['list-type']) !== '2'
  ) {
    return false;
  }
  const prefix = one(ctx.query.prefix) ?? '';
  const maxKeys = Math.min(1000, Number(one(ctx.query['max-keys']) ?? 1000));
  const token = one(ctx.query['continuation-token']);
  const startAfter = token
    ? Buffer.from(token, 'base64url').toString()
    : (one(ctx.query['start-after']) ?? '');
  const all = (await keysUnder(directory, bucket, prefix)).filter((o) => o.key > startAfter);
  const page = all.slice(0, maxKeys);
  const truncated = all.length > page.length;
  const contents = page
    .map(
      (o) =>
        `<Contents><Key>${xmlEscape(o.key)}</Key><LastModified>${o.mtime.toISOString()}</LastModified>` +
        `<Size>${o.size}</Size><StorageClass>STANDARD</StorageClass></Contents>`,
    )
    .join('');
  const next = truncated
    ? `<NextContinuationToken>${Buffer.from(page[page.length - 1].key).toString('base64url')}</NextContinuationToken>`
    : '';
  const body =
    '<?xml version="1.0" encoding="UTF-8"?>\n' +
    '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">' +
    `<Name>${xmlEscape(bucket)}</Name><Prefix>${xmlEscape(prefix)}</Prefix><KeyCount>${page.length}</KeyCount>` +
    `<MaxKeys>${maxKeys}</MaxKeys><IsTruncated>${truncated}</IsTruncated>${contents}${next}</ListBucketResult>`;
  ctx.respond = false;
  ctx.res.writeHead(200, { 'Content-Type': 'application/xml', 'Content-Length': Buffer.byteLength(body) });
  ctx.res.end(body);
  return true;
}

async function answerRangedGet(ctx: KoaContext, directory: string, bucket: string): Promise<boolean> {
  const range = /^bytes=(\d+)-(\d*)$/.exec(String(ctx.req.headers.range ?? ''));
  const prefix = `/${bucket}/`;
  if (ctx.method !== 'GET' || !range || !ctx.path.startsWith(prefix)) return false;
  const key = decodeURIComponent(ctx.path.slice(prefix.length));
  const file = objectPath(directory, bucket, key);
  const info = await stat(file).catch(() => undefined);
  if (!info) return false; // let s3rver answer NoSuchKey
  const start = Number(range[1]);
  const end = Math.min(range[2] === '' ? info.size - 1 : Number(range[2]), info.size - 1);
  ctx.respond = false;
  if (start >= info.size || end < start) {
    const body =
      '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InvalidRange</Code>' +
      '<Message>The requested range is not satisfiable</Message></Error>';
    ctx.res.writeHead(416, { 'Content-Type': 'application/xml', 'Content-Length': Buffer.byteLength(body) });
    ctx.res.end(body);
    return true;
  }
  ctx.res.writeHead(206, {
    'Content-Length': end - start + 1,
    'Content-Range': `bytes ${start}-${end}/${info.size}`,
    'Last-Modified': info.mtime.toUTCString(),
    'Accept-Ranges': 'bytes',
  });
  createReadStream(file, { start, end }).pipe(ctx.res);
  return true;
}
