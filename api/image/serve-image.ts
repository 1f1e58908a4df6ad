import type { IncomingMessage, ServerResponse } from 'node:http';
import type { RepositoryApi, SnapshotInfo } from '../../repo-engine/types.js';
import { sendJson } from '../context.js';
import { refuseSealedSnapshot } from '../sealed-snapshots.js';
import { parseRange } from './byte-range.js';
import { ImageIndexCache } from './image-index.js';
import { streamImage, ZeroChunkIds } from './image-stream.js';
import { whileSnapshotHeld } from './snapshot-hold.js';

/** The whole image's SHA-256, hex: what `sha256sum` prints for a restored disk. */
export const IMAGE_SHA256_HEADER = 'x-diskvault-image-sha256';

/** What one repository's image serving keeps between requests. */
interface ImageServing {
  indexes: ImageIndexCache;
  zeros: ZeroChunkIds;
}
const servingByRepo = new WeakMap<RepositoryApi, ImageServing>();

function servingFor(repo: RepositoryApi): ImageServing {
  let s = servingByRepo.get(repo);
  if (!s) {
    s = { indexes: new ImageIndexCache(repo), zeros: new ZeroChunkIds(repo.chunker.max) };
    servingByRepo.set(repo, s);
  }
  return s;
}

/** Headers that describe only a body that was never sent: off before an error answer takes the response. */
const BODY_HEADERS = ['content-length', 'content-range', 'content-disposition', 'content-type'];

function fileName(s: SnapshotInfo): string {
  const stamp = new Date(s.time)
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d+Z$/, 'Z');
  return `${s.host}-${s.disk}-${stamp}.img`;
}

/**
 * Answers GET or HEAD for a snapshot's raw disk image (whoever may read it has been decided by the caller):
 * Content-Length, Accept-Ranges, a strong ETag (the image's SHA-256), the whole
 * image's SHA-256, and 206 for a single satisfiable Range (If-Range honoured), 416 for an unsatisfiable one.
 * A failure before the first byte is an ordinary error answer; after it, the caller's error handling cuts
 * the connection, because by then the status line has promised bytes that cannot be delivered.
 */
export async function serveImage(
  repo: RepositoryApi,
  snap: SnapshotInfo,
  req: IncomingMessage,
  res: ServerResponse,
): Promise<void> {
  refuseSealedSnapshot(snap, 'its image');
  const size = snap.size;
  // The image's SHA-256, not the snapshot's id: an id deleted and committed again names another image, and
  // a download resumed with If-Range must never join the two.
  const etag = `"${snap.sha256}"`;
  const ifRange = req.headers['if-range'];
  // A Range only applies to the image the client already holds part of (RFC 9110 13.1.5).
  const range =
    ifRange === undefined || String(ifRange).trim() === etag
      ? parseRange(req.headers.range, size)
      : ({ kind: 'whole' } as const);
  res.setHeader('accept-ranges', 'bytes');
  res.setHeader('etag', etag);
  res.setHeader('last-modified', new Date(snap.time).toUTCString());
  res.setHeader(IMAGE_SHA256_HEADER, snap.sha256);
  res.setHeader('repr-digest', `sha-256=:${Buffer.from(snap.sha256, 'hex').toString('base64')}:`);
  // Proxies must not compress or keep a disk image (nor, for a share link, the capability it stands for).
  res.setHeader('cache-control', 'private, no-store, no-transform');
  if (range.kind === 'unsatisfiable') {
    res.setHeader('content-range', `bytes */${size}`);
    sendJson(res, 416, {
      code: 'RangeNotSatisfiable',
      message: `the requested range lies beyond the image's ${size} bytes`,
    });
    return;
  }
  const [start, end] = range.kind === 'range' ? [range.start, range.end] : [0, size];
  res.statusCode = range.kind === 'range' ? 206 : 200;
  res.setHeader('content-type', 'application/octet-stream');
  res.setHeader('content-disposition', `attachment; filename="${fileName(snap)}"`);
  res.setHeader('content-length', end - start);
  if (range.kind === 'range') res.setHeader('content-range', `bytes ${start}-${end - 1}/${size}`);
  if (req.method === 'HEAD' || start === end) {
    res.end();
    return;
  }
  const serving = servingFor(repo);
  try {
    await whileSnapshotHeld(repo, snap.id, async () => {
      const index = await serving.indexes.get(snap);
      await streamImage(repo, index, serving.zeros, start, end, res);
    });
  } catch (err) {
    if (!res.headersSent) for (const h of BODY_HEADERS) res.removeHeader(h);
    throw err;
  }
  res.end();
}
