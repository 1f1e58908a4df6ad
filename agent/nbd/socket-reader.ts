import type { Socket } from 'node:net';

/** The peer closed the connection (or it failed) before sending what the protocol needs. */
export class ConnectionClosed extends Error {
  constructor() {
    super('connection closed');
  }
}

/**
 * Exact-length reads from a socket: `read(n)` resolves with the next n bytes once they have arrived. The
 * NBD protocol is a sequence of fixed headers and counted payloads, so this is all a parser needs. The
 * socket is paused while more than `highWater` bytes wait unread, so a client that sends faster than it is
 * served is held back by TCP rather than by our memory.
 */
export class SocketReader {
  private readonly pieces: Buffer[] = [];
  private buffered = 0;
  private waiting: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private closed = false;

  constructor(
    private readonly socket: Socket,
    private readonly highWater = 8 * 1024 * 1024,
  ) {
    socket.on('data', (d: Buffer) => {
      this.pieces.push(d);
      this.buffered += d.length;
      this.settle();
    });
    const close = () => {
      this.closed = true;
      this.settle();
    };
    socket.on('end', close);
    socket.on('close', close);
    socket.on('error', close);
  }

  read(n: number): Promise<Buffer> {
    if (this.waiting) return Promise.reject(new Error('one read at a time'));
    return new Promise((resolve, reject) => {
      this.waiting = { n, resolve, reject };
      this.settle();
    });
  }

  private settle(): void {
    const w = this.waiting;
    if (w && this.buffered >= w.n) {
      this.waiting = undefined;
      w.resolve(this.take(w.n));
    } else if (w && this.closed) {
      this.waiting = undefined;
      w.reject(new ConnectionClosed());
    }
    // Never paused below what the pending read needs, or it would wait forever.
    if (this.buffered > Math.max(this.highWater, this.waiting?.n ?? 0)) this.socket.pause();
    else if (this.socket.isPaused() && !this.closed) this.socket.resume();
  }

  private take(n: number): Buffer {
    this.buffered -= n;
    const first = this.pieces[0];
    if (first && first.length >= n) {
      if (first.length === n) this.pieces.shift();
      else this.pieces[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let at = 0;
    while (at < n) {
      const piece = this.pieces[0];
      const used = Math.min(piece.length, n - at);
      piece.copy(out, at, 0, used);
      at += used;
      if (used === piece.length) this.pieces.shift();
      else this.pieces[0] = piece.subarray(used);
    }
    return out;
  }
}
