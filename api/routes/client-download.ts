import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import type { Server } from 'restify';
import { NotFoundError } from '../../common/errors.js';
import { type ApiContext, route, sendJson } from '../context.js';
import { parseRange } from '../image/byte-range.js';

export const CLIENT_BINARY_NAME = 'diskvault-linux-x64';

/** Whether this process is the single-file binary itself (node:sea is missing before Node 20.12). */
async function runningAsBinary(): Promise<boolean> {
  try {
    return (await import('node:sea')).isSea();
  } catch {
    return false;
  }
}

/**
 * The single-file client of the server's own build: the running executable when the server is that binary,
 * else dist/diskvault-linux-x64 beside the compiled server (npm run build:binary).
 */
async function clientBinaryPath(): Promise<string> {
  if (await runningAsBinary()) return process.execPath;
  return fileURLToPath(new URL(`../../${CLIENT_BINARY_NAME}`, import.meta.url));
}

/**
 * GET and HEAD /v1/client/diskvault-linux-x64: the one-file `diskvault` for Linux x86-64, so a rescue shell
 * with only curl fetches it from the server it restores from. No token: it is the public client program
 * and holds no secret, and a rescue shell may hold only a share link. Its SHA-256 is sent as a header (and
 * is the ETag), Range is answered as for images so an interrupted download resumes.
 */
export function registerClientDownloadRoutes(server: Server, ctx: ApiContext): void {
  let hashed: { key: string; sha256: string } | undefined;
  const handler = route(
    ctx,
    async (req, res) => {
      const path = await clientBinaryPath();
      const st = await stat(path).catch(() => undefined);
      if (!st?.isFile())
        throw new NotFoundError(
          `this server has no ${CLIENT_BINARY_NAME}: build it with npm run build:binary`,
        );
      const key = `${st.mtimeMs}:${st.size}:${st.ino}`;
      if (hashed?.key !== key) {
        const h = createHash('sha256');
        for await (const piece of createReadStream(path, { highWaterMark: 4 << 20 }))
          h.update(piece as Buffer);
        hashed = { key, sha256: h.digest('hex') };
      }
      const etag = `"${hashed.sha256}"`;
      const ifRange = req.headers['if-range'];
      const range =
        ifRange === undefined || String(ifRange).trim() === etag
          ? parseRange(req.headers.range, st.size)
          : ({ kind: 'whole' } as const);
      res.setHeader('accept-ranges', 'bytes');
      res.setHeader('etag', etag);
      res.setHeader('x-diskvault-sha256', hashed.sha256);
      if (range.kind === 'unsatisfiable') {
        res.setHeader('content-range', `bytes */${st.size}`);
        sendJson(res, 416, { code: 'RangeNotSatisfiable', message: `the file has ${st.size} bytes` });
        return;
      }
      const [start, end] = range.kind === 'range' ? [range.start, range.end] : [0, st.size];
      res.statusCode = range.kind === 'range' ? 206 : 200;
      res.setHeader('content-type', 'application/octet-stream');
      res.setHeader('content-disposition', `attachment; filename="${CLIENT_BINARY_NAME}"`);
      res.setHeader('content-length', end - start);
      if (range.kind === 'range') res.setHeader('content-range', `bytes ${start}-${end - 1}/${st.size}`);
      if (req.method === 'HEAD' || start === end) {
        res.end();
        return;
      }
      await pipeline(createReadStream(path, { start, end: end - 1 }), res);
    },
    { auth: false },
  );
  server.get(`/v1/client/${CLIENT_BINARY_NAME}`, handler);
  server.head(`/v1/client/${CLIENT_BINARY_NAME}`, handler);
}
