import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { decompress } from 'zstd-napi';
import { DiskvaultClient } from '../../agent/client.js';
import { REPOSITORY_KEY_FILE } from '../../api/repository-key-file.js';
import {
  CHUNK_FETCH_PROTOCOL,
  FETCH_FRAME_HEADER_BYTES,
  FetchFrameKind,
  FrameSplitter,
  writeFrameHeader,
} from '../../common/chunk-stream.js';
import { EXIT_INTERRUPTED } from '../../common/cli.js';
import { isDiskvaultError } from '../../common/errors.js';
import { parseConfig } from '../../repo-engine/config.js';
import { deriveSubkeys } from '../../repo-engine/object-crypto.js';
import { objectCodec } from '../../repo-engine/stored-objects.js';
import { call } from '../helpers/api-client.js';
import { corruptStoredChunk, readSnapshot, runCli, sha256File } from '../helpers/backup-e2e.js';
import { DISKVAULT } from '../helpers/diskvault-command.js';
import { chunkGetLines, fetchStreamLines } from '../helpers/download-logs.js';
import { pollUntil, pollUntilSteady } from '../helpers/poll.js';
import { startTestServer, TEST_CHUNKER, type TestServer } from '../helpers/server.js';

/**
 * The fetch stream end to end: the real CLI restores over it bit for bit (and provably over it, not per
 * chunk), a lost connection is opened again, a chunk missing or damaged in storage ends the restore with one
 * line naming it, another tenant's chunk is NotFound, and a server without the stream is read per chunk.
 */

/** 12 MiB: random, zeros, repeated text and random again, so chunks are raw, zstd and zero. */
async function makeImage(file: string, seed: string): Promise<void> {
  const part = 3 << 20;
  const random = (s: string) => {
    const out = Buffer.alloc(part);
    let block = createHash('sha256').update(s).digest();
    for (let at = 0; at < part; at += 32) {
      block.copy(out, at);
      block = createHash('sha256').update(block).digest();
    }
    return out;
  };
  const text = Buffer.alloc(part, `${seed}: the quick brown fox jumps over the lazy dog, again and again. `);
  await writeFile(file, Buffer.concat([random(`${seed}a`), Buffer.alloc(part), text, random(`${seed}b`)]));
}

/** Where a chunk's object lies in the server's storage, local or S3. */
async function chunkObjectKey(srv: TestServer, id: string): Promise<string> {
  const config = parseConfig(await srv.storage.getBytes('config'));
  if (!config.encryption) return objectCodec(undefined, config.chunkFanout).chunkKey(id);
  const key = Buffer.from(
    (await readFile(path.join(srv.dataDir, REPOSITORY_KEY_FILE), 'utf8')).trim(),
    'hex',
  );
  return objectCodec(deriveSubkeys(key, config.id), config.chunkFanout).chunkKey(id);
}

/** A chunk of the snapshot's first (random) quarter, named by no other snapshot. */
async function randomChunkOf(client: DiskvaultClient, snapshot: string, nth: number): Promise<string> {
  const { entries } = await readSnapshot(client, snapshot);
  return entries[nth].id;
}

/**
 * A TCP proxy to `server`: 'cut' closes the first connection to have carried 1 MiB towards the agent (a lost
 * link), 'stall' stops passing that connection's bytes towards the agent but keeps it open (a hung link).
 */
async function startProxy(server: string, mode: 'cut' | 'stall') {
  const target = new URL(server);
  let tripped = false;
  const sockets = new Set<net.Socket>();
  const proxy = net.createServer((down) => {
    const up = net.connect(Number(target.port), target.hostname);
    sockets.add(up).add(down);
    let carried = 0;
    let stalled = false;
    up.on('data', (d: Buffer) => {
      carried += d.length;
      if (stalled) return;
      if (!tripped && carried > 1 << 20) {
        tripped = true;
        if (mode === 'cut') {
          down.destroy();
          up.destroy();
        } else stalled = true;
        return;
      }
      down.write(d);
    });
    down.on('data', (d: Buffer) => up.write(d));
    for (const [a, b] of [
      [up, down],
      [down, up],
    ]) {
      a.on('error', () => b.destroy());
      a.on('close', () => {
        sockets.delete(a);
        b.destroy();
      });
    }
  });
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(proxy.address() as net.AddressInfo).port}`,
    tripped: () => tripped,
    stop: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => proxy.close(resolve));
    },
  };
}

/** `args` of the CLI, which must end (with any code) within `ms`. */
async function runWithin(ms: number, args: string[], env: Record<string, string>) {
  const started = Date.now();
  const r = await runCli(args, env);
  return { ...r, ms: Date.now() - started, deadline: ms };
}

for (const storage of ['local', 's3'] as const) {
  let srv: TestServer;
  let dir: string;
  let env: Record<string, string>;
  let image: string;
  let snapshot: string;
  let chunks: number;
  test.before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'dv-fetch-'));
    srv = await startTestServer({ storage, chunker: TEST_CHUNKER });
    env = { DISKVAULT_SERVER: srv.url, DISKVAULT_TOKEN: await srv.makeToken('agent', ['fs1']) };
    image = path.join(dir, 'disk.img');
    await makeImage(image, 'one');
    const r = await runCli(['backup', image, '--host', 'fs1', '--disk', 'sda', '--json'], env);
    if (r.code !== 0) throw new Error(r.stderr);
    snapshot = r.summary!.snapshot;
    chunks = r.summary!.chunks;
  });
  test.after.always(async () => {
    await srv?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test.serial(`[${storage}] a restore fetches every chunk over one stream, bit for bit`, async (t) => {
    const before = srv.logs.length;
    const out = path.join(dir, 'restored.img');
    const r = await runCli(['restore', snapshot, out, '--json'], env);
    t.is(r.code, 0, r.stderr);
    t.is(await sha256File(out), await sha256File(image));
    const fetched = r.summary!.chunksFetched as number;
    t.true(fetched >= 60 && fetched < chunks, `${fetched} of ${chunks} chunks fetched`);
    const logs = srv.logs.slice(before);
    const streams = fetchStreamLines(logs);
    t.is(streams.length, 1, logs.join('\n'));
    t.is(streams[0].outcome, 'done');
    t.is(streams[0].chunks, fetched);
    t.is(streams[0].errors, 0);
    t.is(chunkGetLines(logs).length, 0, 'no chunk went as its own request');
  });

  test.serial(
    `[${storage}] the agent reads each chunk from the socket into the buffer it asked for`,
    async (t) => {
      const client = new DiskvaultClient({ server: srv.url, token: env.DISKVAULT_TOKEN, attempts: 1 });
      const before = srv.logs.length;
      try {
        const { entries } = await readSnapshot(client, snapshot);
        const stream = await client.openChunkFetchStream();
        if (!stream) return t.fail('no stream');
        t.true(stream.readsDirectly);
        const slab = Buffer.alloc(TEST_CHUNKER.max * 2);
        // Three chunks of the random first quarter (stored raw) and three of the text (stored as zstd).
        let offset = 0;
        const picked: { id: string; length: number }[] = [];
        for (const e of entries) {
          if (offset < 3 << 20 ? picked.length < 3 : offset >= 6 << 20 && picked.length < 6) picked.push(e);
          offset += e.length;
        }
        const encodings = new Set<string>();
        for (const e of picked) {
          let given: Buffer | undefined;
          const got = await stream.fetch(e.id, e.length, (n) => {
            given = slab.subarray(0, n);
            return given;
          });
          t.is(got.payload.buffer, slab.buffer, 'the payload lies in the memory the allocator gave');
          t.is(got.payload.byteOffset, given!.byteOffset);
          t.is(got.payload.length, given!.length);
          const raw = got.encoding === 'zstd' ? decompress(got.payload) : got.payload;
          t.is(createHash('sha256').update(raw).digest('hex'), e.id);
          encodings.add(got.encoding);
        }
        t.is(picked.length, 6);
        t.true(encodings.has('zstd'), [...encodings].join());
        stream.end();
        // The server logs the stream once it closes: here, not among the next test's lines.
        await pollUntil(
          () => fetchStreamLines(srv.logs.slice(before)).length,
          (n) => n === 1,
          'the stream to close',
        );
      } finally {
        client.close();
      }
    },
  );

  test.serial(
    `[${storage}] a stream lost mid-restore is opened again and the restore completes`,
    async (t) => {
      // Cuts the first connection to have carried 1 MiB towards the agent: the fetch stream.
      const proxy = await startProxy(srv.url, 'cut');
      try {
        const before = srv.logs.length;
        const out = path.join(dir, 'through-cut.img');
        const r = await runCli(['restore', snapshot, out, '--json'], { ...env, DISKVAULT_SERVER: proxy.url });
        t.is(r.code, 0, r.stderr);
        t.true(proxy.tripped(), 'the proxy cut a connection');
        t.is(await sha256File(out), await sha256File(image));
        const logs = srv.logs.slice(before);
        const streams = fetchStreamLines(logs);
        t.is(streams.length, 2, logs.join('\n'));
        t.is(streams[1].outcome, 'done');
        t.is(chunkGetLines(logs).length, 0, 'the rest came over the new stream, not per chunk');
      } finally {
        await proxy.stop();
      }
    },
  );

  test.serial(`[${storage}] Ctrl-C ends a restore whose stream has stalled, promptly`, async (t) => {
    // Stops passing bytes towards the agent once the stream has carried 1 MiB, keeping the connection open.
    const proxy = await startProxy(srv.url, 'stall');
    try {
      const out = path.join(dir, 'interrupted.img');
      const child = spawn(DISKVAULT, ['restore', snapshot, out], {
        env: { ...process.env, ...env, DISKVAULT_SERVER: proxy.url },
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      let stderr = '';
      child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
      const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
      await pollUntil(proxy.tripped, Boolean, 'the stream to stall', { timeoutMs: 20_000 });
      const sent = Date.now();
      child.kill('SIGINT');
      const code = await exited;
      t.true(Date.now() - sent < 5_000, `exited ${Date.now() - sent} ms after SIGINT`);
      t.is(code, EXIT_INTERRUPTED, stderr);
      t.regex(stderr, /interrupted/);
    } finally {
      await proxy.stop();
    }
  });

  test.serial(
    `[${storage}] another tenant's chunk and an unknown one are NotFound over the stream`,
    async (t) => {
      const ownClient = new DiskvaultClient({ server: srv.url, token: env.DISKVAULT_TOKEN, attempts: 1 });
      const foreign = await srv.makeToken('agent', ['fs9'], 'elsewhere');
      const client = new DiskvaultClient({ server: srv.url, token: foreign, attempts: 1 });
      try {
        const theirs = await randomChunkOf(ownClient, snapshot, 0);
        const unknown = createHash('sha256').update('never stored').digest('hex');
        const stream = await client.openChunkFetchStream();
        if (!stream) return t.fail('no stream');
        for (const id of [theirs, unknown]) {
          const get = await call(srv.url, foreign, 'GET', `/v1/chunks/${id}`, {
            headers: { 'accept-encoding': 'zstd' },
          });
          t.is(get.status, 404);
          const err = await t.throwsAsync(stream.fetch(id, TEST_CHUNKER.max));
          t.true(isDiskvaultError(err), String(err));
          if (!isDiskvaultError(err)) continue;
          t.is(err.code, get.json.code);
          t.is(err.message, get.json.message);
          t.is(err.details?.status, 404);
        }
        // The stream outlives per-chunk errors: its owner's token reads the same chunk, twice at once.
        const own = await ownClient.openChunkFetchStream();
        if (!own) return t.fail('no stream');
        const [a, b] = await Promise.all([
          own.fetch(theirs, TEST_CHUNKER.max),
          own.fetch(theirs, TEST_CHUNKER.max),
        ]);
        const viaGet = await ownClient.getChunkPayload(theirs, TEST_CHUNKER.max);
        for (const got of [a, b]) {
          t.is(got.encoding, viaGet.encoding);
          t.is(got.rawLength, viaGet.rawLength);
          t.true(got.payload.equals(viaGet.payload));
        }
        own.end();
        stream.end();
      } finally {
        client.close();
        ownClient.close();
      }
    },
  );

  test.serial(`[${storage}] an agent that stops reading stops the server's reads`, async (t) => {
    const client = new DiskvaultClient({ server: srv.url, token: env.DISKVAULT_TOKEN });
    const { entries } = await readSnapshot(client, snapshot);
    client.close();
    // The first quarter of the image is random: chunks that do not compress, so few fit in socket buffers.
    const ids = entries.slice(0, 20);
    const asked = 3000;
    const target = new URL(srv.url);
    const socket = net.connect(Number(target.port), target.hostname);
    const metric = async () => {
      const m = await call(srv.url, srv.adminToken, 'GET', '/metrics');
      return Number(/^diskvault_fetch_stream_chunks_total (\d+)$/m.exec(m.bytes.toString())?.[1]);
    };
    try {
      const before = await metric();
      socket.write(
        `GET /v1/chunk-fetch-stream HTTP/1.1\r\nhost: ${target.host}\r\nauthorization: Bearer ${env.DISKVAULT_TOKEN}\r\nconnection: Upgrade\r\nupgrade: ${CHUNK_FETCH_PROTOCOL}\r\n\r\n`,
      );
      let head = Buffer.alloc(0);
      await new Promise<void>((resolve) => {
        const onData = (d: Buffer) => {
          head = Buffer.concat([head, d]);
          if (head.includes('\r\n\r\n')) {
            socket.off('data', onData);
            socket.pause();
            resolve();
          }
        };
        socket.on('data', onData);
      });
      t.regex(head.toString('latin1'), /^HTTP\/1.1 101 /);
      const requests = Buffer.alloc(asked * FETCH_FRAME_HEADER_BYTES);
      for (let i = 0; i < asked; i++) {
        const e = ids[i % ids.length];
        writeFrameHeader(
          requests.subarray(i * FETCH_FRAME_HEADER_BYTES),
          FetchFrameKind.Request,
          0,
          0,
          Buffer.from(e.id, 'hex'),
          e.length,
        );
      }
      socket.write(requests);
      // Nothing is read here: the server fills the socket's buffers, then must stop reading from storage.
      const stalled = (await pollUntilSteady(metric, 'the chunks the server sent')) - before;
      t.true(
        stalled >= 12 && stalled < 600,
        `${stalled} of ${asked} chunks read while the agent read nothing`,
      );
      // Reading again, every request is answered.
      let chunks = 0;
      const splitter = new FrameSplitter(
        () => {},
        (n) => Buffer.allocUnsafe(n),
        (h) => {
          if (h.kind === FetchFrameKind.Chunk) chunks++;
        },
        FETCH_FRAME_HEADER_BYTES,
      );
      const rest = head.subarray(head.indexOf('\r\n\r\n') + 4);
      if (rest.length > 0) splitter.push(rest);
      socket.on('data', (d: Buffer) => splitter.push(d));
      socket.resume();
      await pollUntil(
        () => chunks,
        (n) => n === asked,
        'every request answered',
      );
      t.is((await metric()) - before, asked);
    } finally {
      socket.destroy();
    }
  });

  for (const damage of ['missing', 'corrupt', 'wrong content'] as const) {
    if (storage === 's3' && damage !== 'missing') continue;
    test.serial(
      `[${storage}] a chunk ${damage} in storage ends the restore promptly with one line naming it`,
      async (t) => {
        // A snapshot of its own, never read before: no cache holds its chunks.
        const other = path.join(dir, `other-${damage.replace(' ', '-')}.img`);
        await makeImage(other, damage);
        const b = await runCli(
          ['backup', other, '--host', 'fs1', '--disk', `d-${damage.replace(' ', '-')}`, '--json'],
          env,
        );
        t.is(b.code, 0, b.stderr);
        const client = new DiskvaultClient({ server: srv.url, token: env.DISKVAULT_TOKEN });
        const victim = await randomChunkOf(client, b.summary!.snapshot, 5);
        client.close();
        if (damage === 'missing') await srv.storage.delete(await chunkObjectKey(srv, victim));
        else await corruptStoredChunk(srv.dataDir, victim, { resealed: damage === 'wrong content' });
        const before = srv.logs.length;
        const r = await runWithin(
          20_000,
          ['restore', b.summary!.snapshot, path.join(dir, 'damaged.img')],
          env,
        );
        t.true(r.ms < r.deadline, `the restore took ${r.ms} ms`);
        t.is(r.code, 1, r.stderr);
        const naming = r.stderr.split('\n').filter((l) => l.includes(victim));
        t.is(naming.length, 1, r.stderr);
        t.regex(naming[0], /^diskvault restore: /);
        t.notRegex(r.stderr, /\n\s+at /, 'no stack trace');
        const streams = fetchStreamLines(srv.logs.slice(before));
        t.is(streams.length, 1, 'the chunk was asked for over the stream');
      },
    );
  }

  test.serial(`[${storage}] a server without the stream is read one chunk per request`, async (t) => {
    const plain = await startTestServer({ storage, chunker: TEST_CHUNKER, chunkFetchStream: false });
    try {
      const penv = { DISKVAULT_SERVER: plain.url, DISKVAULT_TOKEN: await plain.makeToken('agent', ['fs2']) };
      const b = await runCli(['backup', image, '--host', 'fs2', '--disk', 'sda', '--json'], penv);
      t.is(b.code, 0, b.stderr);
      const lease = await call(
        plain.url,
        penv.DISKVAULT_TOKEN,
        'POST',
        `/v1/snapshots/${b.summary!.snapshot}/lease`,
        {
          json: {},
        },
      );
      t.is(lease.status, 201);
      t.is(lease.json.chunkFetchStream, undefined);
      const before = plain.logs.length;
      const out = path.join(dir, 'per-chunk.img');
      const r = await runCli(['restore', b.summary!.snapshot, out, '--json'], penv);
      t.is(r.code, 0, r.stderr);
      t.is(await sha256File(out), await sha256File(image));
      const logs = plain.logs.slice(before);
      t.is(fetchStreamLines(logs).length, 0);
      t.is(chunkGetLines(logs).length, r.summary!.chunksFetched as number);
      // And the route itself is absent, as on a server that predates it.
      const client = new DiskvaultClient({ server: plain.url, token: penv.DISKVAULT_TOKEN, attempts: 1 });
      t.is(await client.openChunkFetchStream(), undefined);
      client.close();
    } finally {
      await plain.stop();
    }
  });

  test.serial(`[${storage}] the lease answer names the fetch stream`, async (t) => {
    const r = await call(srv.url, env.DISKVAULT_TOKEN, 'POST', `/v1/snapshots/${snapshot}/lease`, {
      json: {},
    });
    t.is(r.status, 201);
    t.is(r.json.chunkFetchStream, CHUNK_FETCH_PROTOCOL);
    await call(srv.url, env.DISKVAULT_TOKEN, 'DELETE', `/v1/leases/${r.json.leaseId}`);
  });
}
