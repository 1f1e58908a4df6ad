import { once } from 'node:events';
import { type AddressInfo, createServer, type Server, type Socket } from 'node:net';
import { ConnectionClosed, SocketReader } from './socket-reader.js';

/** What is served: a fixed size and positional reads within it. */
export interface NbdExport {
  name: string;
  description?: string;
  size: number;
  read(offset: number, length: number): Promise<Buffer>;
}

export interface NbdServerOptions {
  /** Largest read answered (EINVAL beyond); also the largest write payload swallowed. Default 32 MiB. */
  maxRequestBytes?: number;
  /** Reads in flight per connection before the next request is read. Default 16. */
  maxInFlight?: number;
  /** Bytes of reads in flight per connection (one read may exceed it alone). Default 64 MiB. */
  maxInFlightBytes?: number;
  /** A read that failed (a damaged or missing chunk): the client got EIO. */
  onReadError?: (err: unknown, offset: number, length: number) => void;
}

const NBDMAGIC = Buffer.from('NBDMAGIC');
const IHAVEOPT = Buffer.from('IHAVEOPT');
const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;

const FLAG_FIXED_NEWSTYLE = 1;
const FLAG_NO_ZEROES = 2;
const TRANSMISSION_FLAGS =
  (1 << 0) /* HAS_FLAGS */ | (1 << 1) /* READ_ONLY */ | (1 << 8); /* CAN_MULTI_CONN */

const OPT = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, INFO: 6, GO: 7 } as const;
const REP = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  ERR_UNSUP: 0x80000001,
  ERR_INVALID: 0x80000003,
  ERR_UNKNOWN: 0x80000006,
} as const;
const INFO = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;
const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, WRITE_ZEROES: 6 } as const;
const ERRNO = { EPERM: 1, EIO: 5, EINVAL: 22 } as const;

/** Option payloads are names and short lists; anything larger is not a client we can talk to. */
const MAX_OPTION_BYTES = 64 * 1024;

/**
 * A read-only NBD server (the protocol of nbd-client, qemu and libnbd: NetworkBlockDevice/nbd doc/proto.md)
 * for one export: fixed newstyle handshake, NBD_OPT_GO/INFO/EXPORT_NAME/LIST/ABORT, and simple replies.
 * Reads may run concurrently and answer out of order (the handle says which is which); writes are refused
 * with EPERM. Structured replies and metadata contexts are declined, which every client must accept.
 */
export class NbdServer {
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  private readonly maxRequestBytes: number;
  private readonly maxInFlight: number;
  private readonly maxInFlightBytes: number;
  /**
   * The export's size rounded up to whole 512-byte sectors. qemu (and any client that counts in sectors)
   * rounds an odd size up and reads the last sector whole; the bytes past the image read as zeros.
   */
  private readonly readableEnd: number;

  constructor(
    private readonly exp: NbdExport,
    private readonly opts: NbdServerOptions = {},
  ) {
    this.maxRequestBytes = opts.maxRequestBytes ?? 32 * 1024 * 1024;
    this.maxInFlight = opts.maxInFlight ?? 16;
    this.maxInFlightBytes = opts.maxInFlightBytes ?? 64 * 1024 * 1024;
    this.readableEnd = Math.ceil(exp.size / 512) * 512;
    this.server = createServer((socket) => {
      this.sockets.add(socket);
      socket.setNoDelay(true);
      socket.on('close', () => this.sockets.delete(socket));
      socket.on('error', () => {});
      this.serve(socket).catch(() => socket.destroy());
    });
  }

  async listen(port: number, host: string): Promise<AddressInfo> {
    this.server.listen(port, host);
    await once(this.server, 'listening');
    return this.server.address() as AddressInfo;
  }

  /** Connections open now. */
  get connections(): number {
    return this.sockets.size;
  }

  /** Stops listening and drops every connection. */
  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private async serve(socket: Socket): Promise<void> {
    const input = new SocketReader(socket);
    const hello = Buffer.alloc(18);
    NBDMAGIC.copy(hello, 0);
    IHAVEOPT.copy(hello, 8);
    hello.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
    socket.write(hello);
    try {
      const clientFlags = (await input.read(4)).readUInt32BE(0);
      if (await this.negotiate(socket, input, (clientFlags & FLAG_NO_ZEROES) !== 0))
        await this.transmit(socket, input);
    } catch (err) {
      if (!(err instanceof ConnectionClosed)) throw err;
    }
    // A connection we ended (NBD_CMD_DISC, NBD_OPT_ABORT) closes once what is queued has been sent;
    // anything else (a protocol violation, the peer gone) is cut at once.
    if (!socket.writableEnded) socket.destroy();
  }

  /** Option haggling; true once the client has chosen the export and transmission begins. */
  private async negotiate(socket: Socket, input: SocketReader, noZeroes: boolean): Promise<boolean> {
    for (;;) {
      const head = await input.read(16);
      if (!head.subarray(0, 8).equals(IHAVEOPT)) return false;
      const option = head.readUInt32BE(8);
      const length = head.readUInt32BE(12);
      if (length > MAX_OPTION_BYTES) return false;
      const data = length > 0 ? await input.read(length) : Buffer.alloc(0);
      const reply = (type: number, payload: Buffer = Buffer.alloc(0)) =>
        socket.write(optionReply(option, type, payload));

      switch (option) {
        case OPT.EXPORT_NAME: {
          // No way to answer an error here: a wrong name ends the connection, as the protocol says.
          if (!this.isOurs(data.toString('utf8'))) return false;
          const tail = Buffer.alloc(noZeroes ? 10 : 134);
          tail.writeBigUInt64BE(BigInt(this.exp.size), 0);
          tail.writeUInt16BE(TRANSMISSION_FLAGS, 8);
          socket.write(tail);
          return true;
        }
        case OPT.ABORT:
          reply(REP.ACK);
          socket.end();
          return false;
        case OPT.LIST:
          if (length !== 0) reply(REP.ERR_INVALID, Buffer.from('NBD_OPT_LIST takes no data'));
          else {
            const name = Buffer.from(this.exp.name);
            const payload = Buffer.alloc(4 + name.length);
            payload.writeUInt32BE(name.length, 0);
            name.copy(payload, 4);
            reply(REP.SERVER, payload);
            reply(REP.ACK);
          }
          break;
        case OPT.INFO:
        case OPT.GO: {
          const request = parseInfoRequest(data);
          if (!request) {
            reply(REP.ERR_INVALID, Buffer.from('malformed NBD_OPT_INFO/GO'));
            break;
          }
          if (!this.isOurs(request.name)) {
            reply(
              REP.ERR_UNKNOWN,
              Buffer.from(`no export named '${request.name}'; this server has '${this.exp.name}'`),
            );
            break;
          }
          for (const payload of this.infoReplies(request.infos)) reply(REP.INFO, payload);
          reply(REP.ACK);
          if (option === OPT.GO) return true;
          break;
        }
        default:
          // STARTTLS, STRUCTURED_REPLY, metadata contexts...: not offered, and every client copes.
          reply(REP.ERR_UNSUP);
      }
    }
  }

  /** The empty name is the default export (proto.md), which is the only one. */
  private isOurs(name: string): boolean {
    return name === '' || name === this.exp.name;
  }

  private infoReplies(requested: number[]): Buffer[] {
    const out: Buffer[] = [];
    const exportInfo = Buffer.alloc(12);
    exportInfo.writeUInt16BE(INFO.EXPORT, 0);
    exportInfo.writeBigUInt64BE(BigInt(this.exp.size), 2);
    exportInfo.writeUInt16BE(TRANSMISSION_FLAGS, 10);
    out.push(exportInfo);
    if (requested.includes(INFO.NAME)) out.push(infoString(INFO.NAME, this.exp.name));
    if (requested.includes(INFO.DESCRIPTION) && this.exp.description)
      out.push(infoString(INFO.DESCRIPTION, this.exp.description));
    if (requested.includes(INFO.BLOCK_SIZE)) {
      const b = Buffer.alloc(14);
      b.writeUInt16BE(INFO.BLOCK_SIZE, 0);
      b.writeUInt32BE(1, 2); // any alignment works
      b.writeUInt32BE(64 * 1024, 6); // preferred: no read-modify-write cost, a fraction of a chunk
      b.writeUInt32BE(this.maxRequestBytes, 10);
      out.push(b);
    }
    return out;
  }

  private async transmit(socket: Socket, input: SocketReader): Promise<void> {
    const running = new Set<Promise<void>>();
    let runningBytes = 0;
    for (;;) {
      while (running.size >= this.maxInFlight) await Promise.race(running);
      // What we have not sent yet holds back reading more requests, not our memory.
      if (socket.writableNeedDrain) await drainedOrClosed(socket);
      const req = await input.read(28);
      if (req.readUInt32BE(0) !== REQUEST_MAGIC) return;
      const type = req.readUInt16BE(6);
      const handle = req.subarray(8, 16);
      const offset = Number(req.readBigUInt64BE(16));
      const length = req.readUInt32BE(24);
      switch (type) {
        case CMD.READ: {
          if (length > this.maxRequestBytes || offset + length > this.readableEnd) {
            socket.write(simpleReply(handle, ERRNO.EINVAL));
            break;
          }
          // Memory per connection stays bounded however many large reads a client queues.
          while (running.size > 0 && runningBytes + length > this.maxInFlightBytes)
            await Promise.race(running);
          runningBytes += length;
          const job: Promise<void> = this.answerRead(socket, handle, offset, length).finally(() => {
            running.delete(job);
            runningBytes -= length;
          });
          running.add(job);
          break;
        }
        case CMD.WRITE:
          // The payload follows the request and must be consumed to stay in step with the client.
          if (length > this.maxRequestBytes) return;
          if (length > 0) await input.read(length);
          socket.write(simpleReply(handle, ERRNO.EPERM));
          break;
        case CMD.TRIM:
        case CMD.WRITE_ZEROES:
          socket.write(simpleReply(handle, ERRNO.EPERM));
          break;
        case CMD.FLUSH:
          // Nothing is ever written, so everything is as durable as it will get.
          socket.write(simpleReply(handle, 0));
          break;
        case CMD.DISC:
          await Promise.all(running);
          socket.end();
          return;
        default:
          socket.write(simpleReply(handle, ERRNO.EINVAL));
      }
    }
  }

  private async answerRead(socket: Socket, handle: Buffer, offset: number, length: number): Promise<void> {
    let data: Buffer;
    try {
      const inImage = Math.max(0, Math.min(length, this.exp.size - offset));
      data = inImage === 0 ? Buffer.alloc(0) : await this.exp.read(offset, inImage);
      if (inImage < length) data = Buffer.concat([data, Buffer.alloc(length - inImage)]);
    } catch (err) {
      this.opts.onReadError?.(err, offset, length);
      socket.write(simpleReply(handle, ERRNO.EIO));
      return;
    }
    // Header and data in one call each, back to back: no other reply can come between them.
    socket.write(simpleReply(handle, 0));
    socket.write(data);
  }
}

/** Waits for room in the socket's send buffer; a connection closed meanwhile ends the wait too. */
function drainedOrClosed(socket: Socket): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      socket.off('drain', done);
      socket.off('close', done);
      resolve();
    };
    socket.on('drain', done);
    socket.on('close', done);
  });
}

function optionReply(option: number, type: number, payload: Buffer): Buffer {
  const b = Buffer.alloc(20 + payload.length);
  b.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(type, 12);
  b.writeUInt32BE(payload.length, 16);
  payload.copy(b, 20);
  return b;
}

function simpleReply(handle: Buffer, error: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  handle.copy(b, 8);
  return b;
}

function infoString(type: number, text: string): Buffer {
  const s = Buffer.from(text);
  const b = Buffer.alloc(2 + s.length);
  b.writeUInt16BE(type, 0);
  s.copy(b, 2);
  return b;
}

/** NBD_OPT_INFO/GO data: 32-bit name length, name, 16-bit count, that many 16-bit info types. */
function parseInfoRequest(data: Buffer): { name: string; infos: number[] } | undefined {
  if (data.length < 6) return undefined;
  const nameLength = data.readUInt32BE(0);
  if (4 + nameLength + 2 > data.length) return undefined;
  const name = data.toString('utf8', 4, 4 + nameLength);
  const count = data.readUInt16BE(4 + nameLength);
  if (data.length !== 4 + nameLength + 2 + 2 * count) return undefined;
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(data.readUInt16BE(4 + nameLength + 2 + 2 * i));
  return { name, infos };
}
