import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { SocketReader } from '../../agent/nbd/socket-reader.js';

/**
 * A small NBD client for tests that need to send what qemu never would (unknown names, writes to a
 * read-only export, reads past the end) and to see each reply as it comes. qemu-img and qemu-io test the
 * server as real clients elsewhere.
 */

export const NBD = {
  OPT_EXPORT_NAME: 1,
  OPT_ABORT: 2,
  OPT_LIST: 3,
  OPT_INFO: 6,
  OPT_GO: 7,
  OPT_STRUCTURED_REPLY: 8,
  REP_ACK: 1,
  REP_SERVER: 2,
  REP_INFO: 3,
  REP_ERR_UNSUP: 0x80000001,
  REP_ERR_INVALID: 0x80000003,
  REP_ERR_UNKNOWN: 0x80000006,
  INFO_EXPORT: 0,
  INFO_NAME: 1,
  INFO_BLOCK_SIZE: 3,
  CMD_READ: 0,
  CMD_WRITE: 1,
  CMD_DISC: 2,
  CMD_FLUSH: 3,
  FLAG_READ_ONLY: 2,
  EPERM: 1,
  EIO: 5,
  EINVAL: 22,
} as const;

export interface OptionReply {
  option: number;
  type: number;
  data: Buffer;
}

export class TestNbdClient {
  private constructor(
    readonly socket: Socket,
    private readonly input: SocketReader,
    readonly handshakeFlags: number,
  ) {}

  /** Connects and answers the handshake with `clientFlags` (1 = fixed newstyle, 2 = no zeroes). */
  static async connect(port: number, clientFlags = 3): Promise<TestNbdClient> {
    const socket = connect(port, '127.0.0.1');
    await once(socket, 'connect');
    const input = new SocketReader(socket);
    const hello = await input.read(18);
    if (hello.toString('latin1', 0, 16) !== 'NBDMAGICIHAVEOPT') throw new Error('not an NBD server');
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(clientFlags, 0);
    socket.write(flags);
    return new TestNbdClient(socket, input, hello.readUInt16BE(16));
  }

  sendOption(option: number, data: Buffer = Buffer.alloc(0)): void {
    const head = Buffer.alloc(16);
    head.write('IHAVEOPT', 0, 'latin1');
    head.writeUInt32BE(option, 8);
    head.writeUInt32BE(data.length, 12);
    this.socket.write(Buffer.concat([head, data]));
  }

  async optionReply(): Promise<OptionReply> {
    const head = await this.input.read(20);
    if (head.readBigUInt64BE(0) !== 0x3e889045565a9n) throw new Error('bad option reply magic');
    const length = head.readUInt32BE(16);
    return {
      option: head.readUInt32BE(8),
      type: head.readUInt32BE(12),
      data: length ? await this.input.read(length) : Buffer.alloc(0),
    };
  }

  /** Sends an option and collects replies up to the first ACK or error. */
  async option(option: number, data?: Buffer): Promise<OptionReply[]> {
    this.sendOption(option, data);
    const replies: OptionReply[] = [];
    for (;;) {
      const r = await this.optionReply();
      replies.push(r);
      if (r.type === NBD.REP_ACK || r.type >= 0x80000000) return replies;
    }
  }

  /** NBD_OPT_GO (or INFO) data for `name` asking for `infos`. */
  static goData(name: string, infos: number[] = []): Buffer {
    const n = Buffer.from(name);
    const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
    b.writeUInt32BE(n.length, 0);
    n.copy(b, 4);
    b.writeUInt16BE(infos.length, 4 + n.length);
    for (const [i, type] of infos.entries()) b.writeUInt16BE(type, 4 + n.length + 2 + 2 * i);
    return b;
  }

  /** Reads what follows NBD_OPT_EXPORT_NAME: size, transmission flags, and the zeros unless NO_ZEROES. */
  async exportNameTail(noZeroes: boolean): Promise<{ size: bigint; flags: number }> {
    const tail = await this.input.read(noZeroes ? 10 : 134);
    return { size: tail.readBigUInt64BE(0), flags: tail.readUInt16BE(8) };
  }

  sendRequest(type: number, handle: bigint, offset: bigint | number, length: number, payload?: Buffer): void {
    const b = Buffer.alloc(28);
    b.writeUInt32BE(0x25609513, 0);
    b.writeUInt16BE(0, 4);
    b.writeUInt16BE(type, 6);
    b.writeBigUInt64BE(handle, 8);
    b.writeBigUInt64BE(BigInt(offset), 16);
    b.writeUInt32BE(length, 24);
    this.socket.write(payload ? Buffer.concat([b, payload]) : b);
  }

  /**
   * The next simple reply. `readLengths` maps the handles of reads in flight to their lengths, since a
   * successful read's data follows its header with no length of its own.
   */
  async reply(
    readLengths: Map<bigint, number> = new Map(),
  ): Promise<{ handle: bigint; error: number; data?: Buffer }> {
    const head = await this.input.read(16);
    if (head.readUInt32BE(0) !== 0x67446698) throw new Error('bad reply magic');
    const error = head.readUInt32BE(4);
    const handle = head.readBigUInt64BE(8);
    const length = readLengths.get(handle);
    if (error === 0 && length !== undefined) return { handle, error, data: await this.input.read(length) };
    return { handle, error };
  }

  /** One read, start to finish. */
  async read(offset: number, length: number): Promise<{ error: number; data?: Buffer }> {
    const handle = BigInt(Math.floor(Math.random() * 2 ** 48));
    this.sendRequest(NBD.CMD_READ, handle, offset, length);
    const r = await this.reply(new Map([[handle, length]]));
    if (r.handle !== handle) throw new Error('reply for another handle');
    return r;
  }

  /** Resolves once the server has closed the connection. */
  async closed(): Promise<void> {
    if (this.socket.destroyed || this.socket.readableEnded) return;
    await once(this.socket, 'close');
  }

  destroy(): void {
    this.socket.destroy();
  }
}
