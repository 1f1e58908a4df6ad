import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

/**
 * An HTTP proxy in front of the fake S3 server that misbehaves on request: answers 500 (always, or for the
 * next N requests), delays every answer, stalls (never answers), refuses connections as a stopped server
 * does, or passes N writes and then stops (S3 going away mid-backup at a point that does not depend on how
 * fast the backup runs). The S3 adapter talks to it as to any S3 endpoint; SigV4 signatures still hold
 * because the Host header and path are passed through untouched.
 */
export type S3Mode =
  | { kind: 'pass' }
  | { kind: 'fail'; status?: number; count?: number; methods?: string[] }
  | { kind: 'delay'; ms: number }
  | { kind: 'stall' }
  | { kind: 'refuse' }
  /** Passes the next `writes` PUT and POST requests; the one after them stops the server ('refuse'). */
  | { kind: 'stop-after'; writes: number };

export interface S3Proxy {
  endpoint: string;
  setMode(mode: S3Mode): Promise<void>;
  /** Requests seen per method since the last resetCounts. */
  counts: Record<string, number>;
  /** Requests answered with an injected error. */
  injected: number;
  /** The server is stopped ('refuse', or 'stop-after' once its writes passed). */
  readonly stopped: boolean;
  resetCounts(): void;
  close(): Promise<void>;
}

export async function startS3Proxy(targetEndpoint: string): Promise<S3Proxy> {
  const target = new URL(targetEndpoint);
  let mode: S3Mode = { kind: 'pass' };
  let failuresLeft = Number.POSITIVE_INFINITY;
  let writesLeft = 0;
  const sockets = new Set<Socket>();
  const stalled = new Set<http.ServerResponse>();
  const state = { counts: {} as Record<string, number>, injected: 0 };

  const server = http.createServer((req, res) => {
    state.counts[req.method ?? '?'] = (state.counts[req.method ?? '?'] ?? 0) + 1;
    if (mode.kind === 'stall') {
      stalled.add(res);
      req.resume();
      return;
    }
    if (mode.kind === 'stop-after' && (req.method === 'PUT' || req.method === 'POST')) {
      if (writesLeft === 0) {
        // Cuts this request's connection with the others.
        void setMode({ kind: 'refuse' });
        return;
      }
      writesLeft--;
    }
    if (
      mode.kind === 'fail' &&
      failuresLeft > 0 &&
      (!mode.methods || mode.methods.includes(req.method ?? ''))
    ) {
      failuresLeft--;
      state.injected++;
      req.resume();
      req.on('end', () => {
        const body =
          '<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code><Message>injected</Message></Error>';
        res.writeHead((mode as { status?: number }).status ?? 500, {
          'content-type': 'application/xml',
          'content-length': Buffer.byteLength(body),
        });
        res.end(body);
      });
      return;
    }
    const forward = () => {
      const upstream = http.request(
        { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers },
        (up) => {
          res.writeHead(up.statusCode ?? 502, up.headers);
          up.pipe(res);
        },
      );
      upstream.on('error', () => res.destroy());
      req.pipe(upstream);
    };
    if (mode.kind === 'delay') setTimeout(forward, mode.ms);
    else forward();
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  let listening = true;

  const cutEverything = () => {
    for (const r of stalled) r.destroy();
    stalled.clear();
    for (const s of sockets) s.destroy();
  };

  async function setMode(next: S3Mode): Promise<void> {
    if (mode.kind === 'stall' && next.kind !== 'stall') cutEverything();
    mode = next;
    failuresLeft = next.kind === 'fail' ? (next.count ?? Number.POSITIVE_INFINITY) : 0;
    writesLeft = next.kind === 'stop-after' ? next.writes : 0;
    if (next.kind === 'refuse' && listening) {
      // A stopped server: the port is closed (ECONNREFUSED) and open connections are cut.
      listening = false;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      cutEverything();
      await closed;
    } else if (next.kind !== 'refuse' && !listening) {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(port, '127.0.0.1', () => {
          server.off('error', reject);
          resolve();
        });
      });
      listening = true;
    }
  }

  return {
    endpoint: `http://127.0.0.1:${port}`,
    get counts() {
      return state.counts;
    },
    get injected() {
      return state.injected;
    },
    resetCounts() {
      state.counts = {};
      state.injected = 0;
    },
    get stopped() {
      return !listening;
    },
    setMode,
    async close() {
      cutEverything();
      if (listening) await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
