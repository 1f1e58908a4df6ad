import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import { type NbdExport, NbdServer } from '../../agent/nbd/nbd-server.js';
import { NBD, TestNbdClient } from '../helpers/nbd-client.js';
import { pollUntil, pollUntilSteady } from '../helpers/poll.js';
import { withTempDir } from '../restore/fixtures.js';

const execFileP = promisify(execFile);
/** A hung qemu must fail its test, not outlive it. */
const QEMU = { timeout: 60_000 };

/** An export over a buffer; reads of the `bad` range fail, as a damaged chunk would. */
function bufferExport(data: Buffer, name = 'disk', bad?: [number, number]): NbdExport & { reads: number } {
  const exp = {
    name,
    description: 'a test disk',
    size: data.length,
    reads: 0,
    async read(offset: number, length: number): Promise<Buffer> {
      exp.reads++;
      if (bad && offset < bad[0] + bad[1] && offset + length > bad[0])
        throw new Error('chunk abc is damaged');
      await new Promise((r) => setTimeout(r, Math.random() * 3));
      return Buffer.from(data.subarray(offset, offset + length));
    },
  };
  return exp;
}

async function serve(
  t: { teardown(fn: () => Promise<void>): void },
  exp: NbdExport,
  opts: ConstructorParameters<typeof NbdServer>[1] = {},
): Promise<number> {
  return (await serveWith(t, exp, opts)).port;
}

async function serveWith(
  t: { teardown(fn: () => Promise<void>): void },
  exp: NbdExport,
  opts: ConstructorParameters<typeof NbdServer>[1] = {},
): Promise<{ port: number; server: NbdServer }> {
  const server = new NbdServer(exp, opts);
  const { port } = await server.listen(0, '127.0.0.1');
  t.teardown(() => server.close());
  return { port, server };
}

test('NBD_OPT_GO: the default or named export, read-only with its size; reads, even concurrent, answer by handle', async (t) => {
  const data = randomBytes(3 * 1024 * 1024 + 17);
  const port = await serve(t, bufferExport(data));
  const c = await TestNbdClient.connect(port);
  t.teardown(() => c.destroy());
  t.is(c.handshakeFlags & 3, 3, 'fixed newstyle and no zeroes offered');

  const go = await c.option(NBD.OPT_GO, TestNbdClient.goData('', [NBD.INFO_NAME, NBD.INFO_BLOCK_SIZE]));
  t.is(go.at(-1)?.type, NBD.REP_ACK);
  const infos = go.filter((r) => r.type === NBD.REP_INFO);
  const exportInfo = infos.find((r) => r.data.readUInt16BE(0) === NBD.INFO_EXPORT);
  t.is(Number(exportInfo?.data.readBigUInt64BE(2)), data.length);
  t.truthy((exportInfo?.data.readUInt16BE(10) ?? 0) & NBD.FLAG_READ_ONLY);
  t.is(infos.find((r) => r.data.readUInt16BE(0) === NBD.INFO_NAME)?.data.toString('utf8', 2), 'disk');
  t.is(infos.find((r) => r.data.readUInt16BE(0) === NBD.INFO_BLOCK_SIZE)?.data.readUInt32BE(2), 1);

  // Many reads in flight at once, of sizes that end anywhere, including the very last byte.
  const wanted = new Map<bigint, number>();
  const offsets = new Map<bigint, number>();
  for (let i = 0; i < 40; i++) {
    const length = i === 0 ? 1 : 1 + Math.floor(Math.random() * 300_000);
    const offset = i === 0 ? data.length - 1 : Math.floor(Math.random() * (data.length - length));
    const handle = BigInt(1000 + i);
    wanted.set(handle, length);
    offsets.set(handle, offset);
    c.sendRequest(NBD.CMD_READ, handle, offset, length);
  }
  const seen = new Set<bigint>();
  for (let i = 0; i < 40; i++) {
    const r = await c.reply(wanted);
    t.is(r.error, 0);
    const at = offsets.get(r.handle)!;
    t.true(r.data?.equals(data.subarray(at, at + wanted.get(r.handle)!)), `handle ${r.handle}`);
    seen.add(r.handle);
  }
  t.is(seen.size, 40);

  // A disconnect right behind reads: every read is still answered in full before the connection closes.
  const last = new Map<bigint, number>();
  for (let i = 0; i < 10; i++) {
    last.set(BigInt(i), 1024 * 1024);
    c.sendRequest(NBD.CMD_READ, BigInt(i), i * 100_000, 1024 * 1024);
  }
  c.sendRequest(NBD.CMD_DISC, 99n, 0, 0);
  for (let i = 0; i < 10; i++) {
    const r = await c.reply(last);
    t.true(
      r.data?.equals(data.subarray(Number(r.handle) * 100_000, Number(r.handle) * 100_000 + 1024 * 1024)),
    );
  }
  await c.closed();
});

test('writes, trims and reads past the end are refused, and the connection goes on serving', async (t) => {
  const data = randomBytes(1024 * 1024);
  const port = await serve(t, bufferExport(data));
  const c = await TestNbdClient.connect(port);
  t.teardown(() => c.destroy());
  t.is((await c.option(NBD.OPT_GO, TestNbdClient.goData('disk'))).at(-1)?.type, NBD.REP_ACK);

  c.sendRequest(NBD.CMD_WRITE, 7n, 0, 4096, Buffer.alloc(4096, 0xee));
  t.deepEqual(await c.reply(), { handle: 7n, error: NBD.EPERM });
  c.sendRequest(4 /* TRIM */, 8n, 0, 4096);
  t.deepEqual(await c.reply(), { handle: 8n, error: NBD.EPERM });
  t.is((await c.read(data.length, 1)).error, NBD.EINVAL, 'a whole-sector image has no tail to pad');
  t.is((await c.read(data.length - 10, 11)).error, NBD.EINVAL);
  t.is((await c.read(2 ** 52, 1)).error, NBD.EINVAL);
  t.is((await c.read(0, 64 * 1024 * 1024)).error, NBD.EINVAL, 'over the largest read');
  c.sendRequest(NBD.CMD_FLUSH, 9n, 0, 0);
  t.deepEqual(await c.reply(), { handle: 9n, error: 0 });
  const after = await c.read(100, 4096);
  t.is(after.error, 0);
  t.true(after.data?.equals(data.subarray(100, 4196)), 'the write changed nothing');
});

test('a client that queues large reads and never reads the answers, then goes away, is let go', async (t) => {
  const data = Buffer.alloc(64 * 1024 * 1024, 3);
  const exp = bufferExport(data);
  const { port, server } = await serveWith(t, exp, { maxInFlightBytes: 16 * 1024 * 1024 });
  const c = await TestNbdClient.connect(port);
  await c.option(NBD.OPT_GO, TestNbdClient.goData(''));
  for (let i = 0; i < 40; i++)
    c.sendRequest(NBD.CMD_READ, BigInt(i), (i % 8) * 8 * 1024 * 1024, 8 * 1024 * 1024);
  // Reads stop once the unread replies fill the allowance: wait until the count stops moving.
  const reads = await pollUntilSteady(() => exp.reads, 'reads while nobody reads the replies', {
    quietMs: 500,
    timeoutMs: 10_000,
  });
  t.true(reads < 40, `${reads} of 40 reads answered while nobody reads the replies`);
  t.is(server.connections, 1);
  c.destroy();
  t.is(
    await pollUntil(
      () => server.connections,
      (n) => n === 0,
      'the connection to be let go',
    ),
    0,
  );
});

test('a read that fails answers EIO and is reported; reads elsewhere still succeed', async (t) => {
  const data = randomBytes(1024 * 1024);
  const failures: string[] = [];
  const port = await serve(t, bufferExport(data, 'disk', [500_000, 1000]), {
    onReadError: (err, offset, length) => failures.push(`${(err as Error).message} @${offset}+${length}`),
  });
  const c = await TestNbdClient.connect(port);
  t.teardown(() => c.destroy());
  await c.option(NBD.OPT_GO, TestNbdClient.goData(''));
  t.is((await c.read(499_000, 4096)).error, NBD.EIO);
  t.deepEqual(failures, ['chunk abc is damaged @499000+4096']);
  const ok = await c.read(0, 4096);
  t.is(ok.error, 0);
  t.true(ok.data?.equals(data.subarray(0, 4096)));
});

test('option haggling: LIST names the export, an unknown name is refused and may be retried, unknown options are unsupported', async (t) => {
  const port = await serve(t, bufferExport(Buffer.alloc(8192, 1), 'web1-sda'));
  const c = await TestNbdClient.connect(port);
  t.teardown(() => c.destroy());
  const list = await c.option(NBD.OPT_LIST);
  t.deepEqual(
    list.map((r) => r.type),
    [NBD.REP_SERVER, NBD.REP_ACK],
  );
  t.is(list[0].data.toString('utf8', 4, 4 + list[0].data.readUInt32BE(0)), 'web1-sda');
  t.is((await c.option(NBD.OPT_LIST, Buffer.from('x'))).at(-1)?.type, NBD.REP_ERR_INVALID);
  t.is((await c.option(NBD.OPT_STRUCTURED_REPLY)).at(-1)?.type, NBD.REP_ERR_UNSUP);
  const unknown = await c.option(NBD.OPT_GO, TestNbdClient.goData('other'));
  t.is(unknown.at(-1)?.type, NBD.REP_ERR_UNKNOWN);
  t.regex(unknown.at(-1)?.data.toString() ?? '', /no export named 'other'.*'web1-sda'/);
  t.is((await c.option(NBD.OPT_GO, Buffer.from([0, 0]))).at(-1)?.type, NBD.REP_ERR_INVALID);
  const info = await c.option(NBD.OPT_INFO, TestNbdClient.goData('web1-sda'));
  t.is(info.at(-1)?.type, NBD.REP_ACK, 'INFO answers and stays in negotiation');
  t.is((await c.option(NBD.OPT_GO, TestNbdClient.goData('web1-sda'))).at(-1)?.type, NBD.REP_ACK);
  t.is((await c.read(0, 16)).data?.toString('hex'), '01'.repeat(16));
});

test('NBD_OPT_EXPORT_NAME, the oldest way in: size and flags, with and without the 124 zero bytes', async (t) => {
  const port = await serve(t, bufferExport(Buffer.alloc(65536, 7), 'disk'));
  for (const noZeroes of [true, false]) {
    const c = await TestNbdClient.connect(port, noZeroes ? 3 : 1);
    c.sendOption(NBD.OPT_EXPORT_NAME, Buffer.from('disk'));
    const tail = await c.exportNameTail(noZeroes);
    t.is(tail.size, 65536n);
    t.truthy(tail.flags & NBD.FLAG_READ_ONLY);
    t.is((await c.read(65535, 1)).data?.[0], 7);
    c.destroy();
  }
  // A wrong name cannot be answered in this old form: the connection is closed.
  const c = await TestNbdClient.connect(port);
  c.sendOption(NBD.OPT_EXPORT_NAME, Buffer.from('nope'));
  await c.closed();
  t.pass();
});

test('an image of an odd size reads as zeros past its end up to the next 512-byte sector, as qemu expects', async (t) => {
  const data = randomBytes(4096 + 100);
  const port = await serve(t, bufferExport(data));
  const c = await TestNbdClient.connect(port);
  t.teardown(() => c.destroy());
  await c.option(NBD.OPT_GO, TestNbdClient.goData(''));
  const tail = await c.read(4096, 512);
  t.is(tail.error, 0);
  t.true(tail.data?.equals(Buffer.concat([data.subarray(4096), Buffer.alloc(412)])));
  t.is((await c.read(4096 + 512, 1)).error, NBD.EINVAL);
  t.is((await c.read(4096, 513)).error, NBD.EINVAL);
});

test('qemu-img, a real NBD client, copies the export bit for bit and sees its size', async (t) => {
  // Disks come in whole sectors; the odd-size case has its own test above.
  const data = Buffer.concat([randomBytes(2 * 1024 * 1024), Buffer.alloc(1024 * 1024), randomBytes(12288)]);
  const port = await serve(t, bufferExport(data, 'disk'));
  await withTempDir(async (dir) => {
    const info = JSON.parse(
      (await execFileP('qemu-img', ['info', '--output=json', `nbd://127.0.0.1:${port}/disk`], QEMU)).stdout,
    );
    t.is(info['virtual-size'], data.length);
    const out = join(dir, 'copy.raw');
    await execFileP('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', `nbd://127.0.0.1:${port}`, out], QEMU);
    const copy = await readFile(out);
    t.is(createHash('sha256').update(copy).digest('hex'), createHash('sha256').update(data).digest('hex'));
    // qemu-io writes through the protocol: refused, and the export is unchanged.
    const write = await execFileP(
      'qemu-io',
      ['-f', 'raw', '-c', 'write -P 0x55 0 4k', `nbd://127.0.0.1:${port}/disk`],
      QEMU,
    ).catch((e: { stdout?: string; stderr?: string }) => e);
    t.regex(
      `${write.stdout ?? ''}${write.stderr ?? ''}`,
      /read-only|Permission denied|Operation not permitted/i,
    );
  });
});
