import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Request } from 'restify';
import { requestTokenIds } from './context.js';
import type { Metrics } from './metrics.js';

/**
 * One JSON line per request: method, route pattern, status, bytes in and out, milliseconds, the token
 * id and the client's User-Agent. Never the token, never a query string (it holds session ids).
 */
export function attachRequestLog(
  req: IncomingMessage,
  res: ServerResponse,
  metrics: Metrics,
  log: (line: string) => void,
): void {
  const started = process.hrtime.bigint();
  const socket = req.socket;
  const readBefore = socket.bytesRead;
  const writtenBefore = socket.bytesWritten;
  let done = false;
  const finish = () => {
    if (done) return;
    done = true;
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    const route = (req as Request).getRoute?.()?.path;
    const routeName = typeof route === 'string' ? route : 'unmatched';
    const bytesIn = Math.max(0, socket.bytesRead - readBefore);
    const bytesOut = Math.max(0, socket.bytesWritten - writtenBefore);
    // A response that never finished (client went away) is logged as 499, nginx's convention.
    const status = res.writableFinished ? res.statusCode : 499;
    metrics.observe(req.method ?? '?', routeName, status, ms, bytesIn, bytesOut);
    log(
      JSON.stringify({
        time: new Date().toISOString(),
        method: req.method,
        route: routeName,
        path: loggedPath(req, route),
        status,
        bytesIn,
        bytesOut,
        ms: Math.round(ms * 10) / 10,
        token: requestTokenIds.get(req) ?? null,
        // Which agents still run an old release; the client chose it, so it is capped.
        agent: req.headers['user-agent']?.slice(0, 120) ?? null,
      }),
    );
  };
  res.once('finish', finish);
  res.once('close', finish);
}

const SHARE_IMAGE_ROUTE = '/v1/share/:link/image';

/**
 * The request's path without its query string, and without a share link's secret (a credential: only the
 * link's public id is logged). The share route is known by the route that matched, not by the text of the
 * URL, since restify routes a percent-encoded path and an absolute-form target (`GET http://host/v1/…`) to
 * it as well. Any other path that names a share link, in any of those spellings, has the link's segment
 * replaced too.
 */
function loggedPath(req: IncomingMessage, route: unknown): string {
  if (route === SHARE_IMAGE_ROUTE) {
    const link = (req as Request).params?.link;
    const id = typeof link === 'string' ? /^([0-9a-f]{16})_/.exec(link)?.[1] : undefined;
    return `/v1/share/${id ? `${id}_` : ''}…/image`;
  }
  const path = (req.url ?? '').split('?')[0];
  // Percent-encoded ASCII decoded, also when encoded twice (never failing on a malformed escape), so
  // `/v1/%73hare/…` is seen too.
  let plain = path;
  for (let i = 0; i < 4 && /%[0-7][0-9a-f]/i.test(plain); i++)
    plain = plain.replace(/%([0-7][0-9a-f])/gi, (_, hex: string) =>
      String.fromCharCode(Number.parseInt(hex, 16)),
    );
  if (!/\/share\//i.test(plain)) return path;
  return plain.replace(/(\/share\/)(?:([0-9a-f]{16})_)?[^/]*/gi, (_, prefix: string, id?: string) =>
    id ? `${prefix}${id}_…` : `${prefix}…`,
  );
}
