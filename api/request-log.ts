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
        // A share link's secret is a credential: only its public id is logged.
        path: (req.url ?? '').split('?')[0].replace(/^(\/v1\/share\/[0-9a-f]{16})_[^/]*/, '$1_…'),
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
