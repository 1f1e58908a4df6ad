import type { Duplex } from 'node:stream';
import type { FrameSplitter } from './chunk-stream.js';

/** Bytes read and thrown away once the splitter has stopped (a failed or finished stream). */
const DISCARD_BYTES = 64 * 1024;

/** What node's sockets keep for `onread` (net.Socket's constructor option), found by their descriptions. */
interface UserBufferSlots {
  buffer: symbol;
  callback: symbol;
  generator: symbol;
}

function userBufferSlots(socket: Duplex): UserBufferSlots | undefined {
  const symbols = Object.getOwnPropertySymbols(socket);
  const find = (description: string) => symbols.find((s) => s.description === description);
  const buffer = find('kBuffer');
  const callback = find('kBufferCb');
  const generator = find('kBufferGen');
  return buffer && callback && generator ? { buffer, callback, generator } : undefined;
}

/**
 * Makes `socket` read each frame's bytes straight into the splitter's buffers: the header's own, then the
 * payload's (a recycled buffer), so a received chunk is copied once, by the kernel, and node allocates
 * nothing per read. By default node reads every piece into fresh memory and the splitter copies it again:
 * receiving 1 GiB that way cost 0.2-0.3 s more CPU here than reading into reused memory.
 *
 * It is node's `onread` (net.Socket's option: reads go into a buffer the caller names for each read, and
 * a callback learns how many bytes arrived), switched on for a socket node has already made: an upgraded
 * HTTP connection cannot be given the option when it is created. Node 20 keeps the option in three
 * symbol-keyed slots of the socket; where they are not found (another runtime, a socket of another kind)
 * nothing is changed and the caller reads 'data' events as before, so the answer is the same either way.
 *
 * `onBytes(n)` runs for every read, after the splitter has taken the bytes; it returns false to pause the
 * socket (resume() starts reading again). A TLS socket may still call it after that, with the rest of what
 * it had decrypted from its last read: a caller that pays or counts per call must expect it. An error thrown by the splitter or `onBytes` goes to `onError`,
 * never out of node's read callback. A read takes at most `maxRead` bytes (a paced reader pays after each
 * read, so its reads stay as small as node's own). Returns whether the socket now reads this way.
 */
export function readFramesDirectly(
  socket: Duplex,
  splitter: FrameSplitter,
  onBytes: (n: number) => boolean,
  onError: (err: unknown) => void,
  maxRead = Number.POSITIVE_INFINITY,
): boolean {
  const slots = userBufferSlots(socket);
  const handle = (socket as unknown as { _handle?: { useUserBuffer?(b: Uint8Array): void } })._handle;
  // Bytes node has already read into the stream's queue would be read by no one.
  if (!slots || typeof handle?.useUserBuffer !== 'function' || socket.readableLength > 0) return false;
  const discard = Buffer.allocUnsafe(DISCARD_BYTES);
  // Node asks for the next read's buffer after each callback, so a finished payload (handed on, perhaps to
  // another thread) is never read into again.
  const nextBuffer = () => splitter.nextRegion()?.subarray(0, maxRead) ?? discard;
  const onRead = (n: number, buf: Uint8Array) => {
    try {
      if (buf !== discard) splitter.advance(n);
      return onBytes(n);
    } catch (err) {
      onError(err);
      return true;
    }
  };
  const first = nextBuffer();
  const slotted = socket as unknown as Record<symbol, unknown>;
  slotted[slots.buffer] = first;
  slotted[slots.callback] = onRead;
  slotted[slots.generator] = nextBuffer;
  handle.useUserBuffer(first);
  // Reading goes on as the stream stood: paused by its owner (pause() now stops the reads themselves), or
  // started here (a connection handed over by an upgrade may have been left paused by node).
  if (socket.isPaused()) socket.pause();
  else socket.resume();
  return true;
}
