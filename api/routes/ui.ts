import { readFile } from 'node:fs/promises';
import { extname } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Request, Response, Server } from 'restify';
import { NotFoundError } from '../../common/errors.js';
import { type ApiContext, route } from '../context.js';

/** Where `npm run build` puts the web console (ui/ bundled): dist/ui, next to dist/api. */
const UI_DIR = fileURLToPath(new URL('../../ui/', import.meta.url));

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.map': 'application/json',
};

/** A file name the console ships: flat, no dot first, so no path can climb out of UI_DIR. */
const ASSET = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/** The file a /ui/ path names ('' is index.html); undefined for anything that is not a plain file name. */
function assetName(url: string): string | undefined {
  let name: string;
  try {
    name = decodeURIComponent(new URL(url, 'http://localhost').pathname.slice('/ui/'.length)) || 'index.html';
  } catch {
    return undefined;
  }
  return ASSET.test(name) && extname(name) in TYPES ? name : undefined;
}

/**
 * Only this origin's own files run, nothing inline, no framing (clickjacking a "revoke" button), no
 * referrer; API calls go to the same origin.
 */
export const UI_SECURITY_HEADERS: Record<string, string> = {
  'content-security-policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
    "font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cross-origin-opener-policy': 'same-origin',
  'cache-control': 'no-cache',
};

/**
 * The web console at /ui/: static files built from ui/ by `npm run build`, served by this server (no
 * second process, no CDN). The files hold no data; everything they show comes from /v1 with the token the
 * person typed in, under the same checks as any other client.
 */
export function registerUiRoutes(server: Server, ctx: ApiContext): void {
  const redirect = (to: string) => (_req: Request, res: Response, next: () => void) => {
    res.statusCode = 302;
    res.setHeader('location', to);
    res.end();
    next();
  };
  server.get('/', redirect('/ui/'));
  server.get('/ui', redirect('/ui/'));

  const serve = route(
    ctx,
    async (req, res) => {
      const name = assetName(req.url ?? '/');
      if (!name) throw new NotFoundError('no such file');
      let body: Buffer;
      try {
        body = await readFile(UI_DIR + name);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        throw new NotFoundError(
          name === 'index.html'
            ? 'the web console is not built: run npm run build'
            : `no such file /ui/${name}`,
        );
      }
      res.statusCode = 200;
      for (const [k, v] of Object.entries(UI_SECURITY_HEADERS)) res.setHeader(k, v);
      res.setHeader('content-type', TYPES[extname(name)]);
      res.setHeader('content-length', body.length);
      res.end(req.method === 'HEAD' ? undefined : body);
    },
    { auth: false },
  );
  server.get('/ui/*', serve);
  server.head('/ui/*', serve);
}
