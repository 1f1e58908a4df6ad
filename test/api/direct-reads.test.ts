import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { type Duplex, PassThrough } from 'node:stream';
import test from 'ava';
import {
  FRAME_HEADER_BYTES,
  type FrameHeader,
  FrameKind,
  FrameSplitter,
  writeFrameHeader,
} from '../../common/chunk-stream.js';
import { readFramesDirectly } from '../../common/direct-reads.js';
import { pollUntil } from '../helpers/poll.js';

/**
 * readFramesDirectly on real sockets: an upgraded HTTP connection, plain and TLS, as the chunk and fetch
 * streams use it. The sender cuts its writes across frame boundaries at random; every payload must arrive
 * whole, land in the buffer it was given and nowhere else, and stay as it was once handed on.
 */

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

interface Sent {
  frames: { length: number; sha: string }[];
  wire: Buffer;
}

/** Chunk frames of random sizes (some empty, some one byte, some near 1 MiB), then END. */
function framesToSend(count: number): Sent {
  const frames: Sent['frames'] = [];
  const parts: Buffer[] = [];
  for (let i = 0; i < count; i++) {
    const length = i % 7 === 3 ? 0 : i % 5 === 1 ? 1 : Math.floor(Math.random() * 900_000);
    const payload = randomBytes(length);
    frames.push({ length, sha: sha(payload) });
    parts.push(writeFrameHeader(Buffer.alloc(FRAME_HEADER_BYTES), FrameKind.Chunk, 0, length), payload);
  }
  parts.push(writeFrameHeader(Buffer.alloc(FRAME_HEADER_BYTES), FrameKind.End, 0, 0));
  return { frames, wire: Buffer.concat(parts) };
}

/**
 * Payload buffers cut one after another from one slab, each followed by a guard of 4 KiB: a read that went
 * past the region it was given would change a guard.
 */
class GuardedSlab {
  private readonly slab = Buffer.alloc(64 << 20, 0xa5);
  private at = 0;
  readonly guards: [number, number][] = [];
  take(length: number): Buffer {
    const b = this.slab.subarray(this.at, this.at + length);
    this.guards.push([this.at + length, this.at + length + 4096]);
    this.at += length + 4096;
    return b;
  }
  guardsIntact(): boolean {
    return this.guards.every(([from, to]) => this.slab.subarray(from, to).every((x) => x === 0xa5));
  }
}

type Receiver = (socket: Duplex, head: Buffer) => void;

/** A server whose upgrades go to `receive`; a client that sends `wire` in writes of random sizes. */
async function upgradeAndSend(tls: boolean, wire: Buffer, receive: Receiver): Promise<() => Promise<void>> {
  let credentials: { key: Buffer; cert: Buffer } | undefined;
  let dir: string | undefined;
  if (tls) {
    dir = await mkdtemp(path.join(os.tmpdir(), 'dv-direct-'));
    const [key, cert] = [path.join(dir, 'key.pem'), path.join(dir, 'cert.pem')];
    const args = `req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost`;
    execFileSync('openssl', [...args.split(' '), '-keyout', key, '-out', cert], { stdio: 'ignore' });
    credentials = { key: await readFile(key), cert: await readFile(cert) };
  }
  const server = tls ? https.createServer(credentials!) : http.createServer();
  // Upgraded connections are no longer the HTTP server's: closing it waits for them until they are destroyed.
  const upgraded: Duplex[] = [];
  server.on('upgrade', (_req, socket: Duplex, head: Buffer) => {
    upgraded.push(socket);
    socket.write('HTTP/1.1 101 Switching Protocols\r\nupgrade: test\r\nconnection: Upgrade\r\n\r\n');
    receive(socket, head);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  const req = (tls ? https : http).request({
    host: '127.0.0.1',
    port,
    rejectUnauthorized: false,
    headers: { connection: 'Upgrade', upgrade: 'test' },
  });
  req.on('upgrade', (_res, socket: Duplex) => {
    socket.on('data', () => {});
    socket.on('error', () => {});
    let at = 0;
    const pump = () => {
      while (at < wire.length) {
        const n = 1 + Math.floor(Math.random() * 200_000);
        const more = socket.write(wire.subarray(at, at + n));
        at += n;
        if (!more) return void socket.once('drain', pump);
      }
      socket.end();
    };
    pump();
  });
  req.end();
  return async () => {
    for (const socket of upgraded) socket.destroy();
    await new Promise((resolve) => server.close(resolve));
    if (dir) await rm(dir, { recursive: true, force: true });
  };
}

for (const tls of [false, true]) {
  const over = tls ? 'TLS' : 'plain TCP';

  test(`over ${over}, every frame lands whole in its own buffer and is not written again once handed on`, async (t) => {
    const sent = framesToSend(120);
    const slab = new GuardedSlab();
    const got: { payload: Buffer; sha: string }[] = [];
    let direct: boolean | undefined;
    let ended = false;
    let failure: unknown;
    const close = await upgradeAndSend(tls, sent.wire, (socket, head) => {
      const splitter = new FrameSplitter(
        () => {},
        (n) => slab.take(n),
        (h: FrameHeader, payload) => {
          if (h.kind === FrameKind.End) ended = true;
          else got.push({ payload, sha: sha(payload) });
        },
      );
      splitter.push(head);
      direct = readFramesDirectly(
        socket,
        splitter,
        () => true,
        (err) => {
          failure = err;
        },
      );
      socket.on('end', () => socket.end());
    });
    try {
      await pollUntil(() => ended || failure !== undefined, Boolean, 'the END frame', { intervalMs: 10 });
      t.is(failure, undefined);
      t.true(direct, 'this node offers reads into buffers the caller names');
      t.deepEqual(
        got.map((g) => ({ length: g.payload.length, sha: g.sha })),
        sent.frames,
      );
      // Still as they arrived: nothing was read into a payload after it was complete.
      t.deepEqual(
        got.map((g) => sha(g.payload)),
        sent.frames.map((f) => f.sha),
      );
      t.true(slab.guardsIntact(), 'no read went past the region it was given');
    } finally {
      await close();
    }
  });
}

test('a socket paused from the read callback reads nothing more until it is resumed, nor more than maxRead at once', async (t) => {
  const sent = framesToSend(16);
  let paused = false;
  let readsWhilePaused = 0;
  let reads = 0;
  let largest = 0;
  let frames = 0;
  let ended = false;
  const close = await upgradeAndSend(false, sent.wire, (socket, head) => {
    const splitter = new FrameSplitter(
      () => {},
      (n) => Buffer.alloc(n),
      (h) => {
        if (h.kind === FrameKind.End) ended = true;
        else frames++;
      },
    );
    splitter.push(head);
    readFramesDirectly(
      socket,
      splitter,
      (n) => {
        if (paused) readsWhilePaused++;
        reads++;
        largest = Math.max(largest, n);
        if (reads % 3 !== 0) return true;
        paused = true;
        setTimeout(() => {
          paused = false;
          socket.resume();
        }, 5);
        return false;
      },
      (err) => t.fail(String(err)),
      16_384,
    );
  });
  try {
    await pollUntil(() => ended, Boolean, 'the END frame', { intervalMs: 10 });
    t.is(frames, sent.frames.length);
    t.is(readsWhilePaused, 0);
    t.true(reads > 20, `${reads} reads`);
    t.is(largest, 16_384);
  } finally {
    await close();
  }
});

test('a frame refused on sight goes to onError, and the bytes after it are read and dropped', async (t) => {
  const sent = framesToSend(30);
  const errors: unknown[] = [];
  let frames = 0;
  let remoteEnded = false;
  const close = await upgradeAndSend(false, sent.wire, (socket, head) => {
    let headers = 0;
    const splitter = new FrameSplitter(
      () => {
        if (++headers === 10) throw new Error('the tenth header is refused');
      },
      (n) => Buffer.alloc(n),
      () => frames++,
    );
    splitter.push(head);
    // As the chunk stream does with a refused frame: the splitter stops, the rest is read and dropped.
    readFramesDirectly(
      socket,
      splitter,
      () => true,
      (err) => {
        errors.push(err);
        splitter.stop();
      },
    );
    socket.on('end', () => {
      remoteEnded = true;
      socket.end();
    });
  });
  try {
    await pollUntil(() => remoteEnded, Boolean, 'the sender to finish', { intervalMs: 10 });
    t.is(errors.length, 1);
    t.is((errors[0] as Error).message, 'the tenth header is refused');
    t.is(frames, 9);
  } finally {
    await close();
  }
});

test('a stream that is not a node socket is left to its data events', (t) => {
  const splitter = new FrameSplitter(
    () => {},
    (n) => Buffer.alloc(n),
    () => {},
  );
  t.false(
    readFramesDirectly(
      new PassThrough(),
      splitter,
      () => true,
      () => {},
    ),
  );
});
