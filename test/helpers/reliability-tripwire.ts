import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import net from 'node:net';
import fastcdc from 'fastcdc-wasm';
import type { ChunkerParams } from '../../repo-engine/manifest-codec.js';

/**
 * A TCP pass-through between a client and the server that fires a callback when a request line matching a
 * pattern goes by: the test then SIGKILLs the server while that exact request (a commit, a gc, a forget) is
 * in flight. Fault timing by protocol event instead of by guessing with timers.
 */
export interface Tripwire {
  url: string;
  /** Where connections go; change it after the server restarts on a new port. */
  target: { host: string; port: number };
  /** Fires once per arm() when `pattern` shows up in client->server bytes (after they were forwarded). */
  arm(pattern: RegExp, onMatch: () => void): void;
  /** Fires once when `bytes` more client->server bytes have been forwarded (mid-upload, whatever its speed). */
  armBytes(bytes: number, onReached: (forwarded: number) => void): void;
  close(): Promise<void>;
}

export async function startTripwire(targetUrl: string): Promise<Tripwire> {
  const u = new URL(targetUrl);
  const target = { host: u.hostname, port: Number(u.port) };
  let armed: { pattern: RegExp; onMatch: () => void } | undefined;
  let counting: { left: number; forwarded: number; onReached: (forwarded: number) => void } | undefined;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(target.port, target.host);
    sockets.add(client);
    sockets.add(upstream);
    let tail = '';
    client.on('data', (d: Buffer) => {
      upstream.write(d);
      if (counting) {
        counting.forwarded += d.length;
        counting.left -= d.length;
        if (counting.left <= 0) {
          const { onReached, forwarded } = counting;
          counting = undefined;
          onReached(forwarded);
        }
      }
      if (!armed) return;
      // The previous segment's tail joins this one, so a request line split across two segments still
      // matches; the test runs before trimming, so a head followed by kilobytes of body in one segment
      // (a commit and its manifest, coalesced under load) matches too.
      const window = tail + d.toString('latin1');
      tail = window.slice(-1024);
      if (armed.pattern.test(window)) {
        const fire = armed.onMatch;
        armed = undefined;
        fire();
      }
    });
    upstream.on('data', (d: Buffer) => client.write(d));
    const end = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('close', end).on('error', end);
    upstream.on('close', end).on('error', end);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    target,
    arm(pattern, onMatch) {
      armed = { pattern, onMatch };
    },
    armBytes(bytes, onReached) {
      counting = { left: bytes, forwarded: 0, onReached };
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** The distinct chunks of an image as the agent cuts them (one fastcdc pass), with their raw lengths. */
export async function distinctChunks(image: string, chunker: ChunkerParams): Promise<Map<string, number>> {
  const bytes = await readFile(image);
  const cuts = fastcdc.get_chunks(bytes, chunker.min, chunker.avg, chunker.max);
  const out = new Map<string, number>();
  for (let i = 1; i < cuts.length; i++) {
    const piece = bytes.subarray(cuts[i - 1], cuts[i]);
    out.set(createHash('sha256').update(piece).digest('hex'), piece.length);
  }
  return out;
}
