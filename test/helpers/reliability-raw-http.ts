import net from 'node:net';

/**
 * HTTP at the socket level, for what no well-behaved client sends: a Content-Length that lies, a body cut
 * off, a body that trickles. Resolves with whatever the server answered (status 0 when it answered nothing)
 * once the server closes the socket or `waitMs` has passed.
 */
export interface RawAnswer {
  status: number;
  body: string;
  /** True when the server closed (or reset) the connection. */
  closed: boolean;
  ms: number;
}

export interface RawRequest {
  url: string;
  head: string;
  /** Pieces of body, each written after `gapMs`. */
  pieces?: Buffer[];
  gapMs?: number;
  /** Half-close the socket after the last piece (a client that gave up). */
  endAfter?: boolean;
  waitMs: number;
}

export function rawExchange(r: RawRequest): Promise<RawAnswer> {
  const u = new URL(r.url);
  const started = Date.now();
  return new Promise((resolve) => {
    const socket = net.connect(Number(u.port), u.hostname);
    let data = '';
    let closed = false;
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      const m = /^HTTP\/1\.1 (\d{3})/.exec(data);
      const at = data.indexOf('\r\n\r\n');
      resolve({
        status: m ? Number(m[1]) : 0,
        body: at >= 0 ? data.slice(at + 4) : '',
        closed,
        ms: Date.now() - started,
      });
    };
    const timer = setTimeout(finish, r.waitMs);
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => {
      data += d;
      // One complete answer with a Content-Length is all we wait for.
      const at = data.indexOf('\r\n\r\n');
      const len = /content-length: (\d+)/i.exec(data.slice(0, at));
      if (at >= 0 && len && data.length >= at + 4 + Number(len[1])) finish();
    });
    socket.on('close', () => {
      closed = true;
      finish();
    });
    socket.on('error', () => {
      closed = true;
      finish();
    });
    socket.on('connect', async () => {
      socket.write(r.head);
      for (const p of r.pieces ?? []) {
        if (r.gapMs) await new Promise((res) => setTimeout(res, r.gapMs));
        if (socket.destroyed) return;
        socket.write(p);
      }
      if (r.endAfter && !socket.destroyed) socket.end();
    });
  });
}

/** A request head with CRLFs, ready for rawExchange. */
export function httpHead(method: string, path: string, headers: Record<string, string | number>): string {
  const lines = [
    `${method} ${path} HTTP/1.1`,
    'host: 127.0.0.1',
    ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
  ];
  return `${lines.join('\r\n')}\r\n\r\n`;
}
