import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { DiskvaultClient } from '../../agent/client.js';
import { isDiskvaultError } from '../../common/errors.js';
import { zstdBound } from '../../common/limits.js';
import { SEALED_CHUNK_CONTENT_TYPE } from '../../repo-engine/sealed-chunk.js';
import { call, chunkOf, openSession, zstd } from '../helpers/api-client.js';
import { runCli, sha256File } from '../helpers/backup-e2e.js';
import { startTestServer, TEST_CHUNKER, type TestServer } from '../helpers/server.js';

/**
 * The chunk stream end to end: the real CLI backs up over it and restores bit for bit, and a bad chunk
 * sent through it is refused with exactly the answer `PUT /v1/chunks/:id` gives for the same bytes.
 */

/** 12 MiB: random, zeros, repeated text and random again, so chunks are raw, zstd and deduplicated. */
async function makeImage(file: string): Promise<void> {
  const part = 3 << 20;
  const random = (seed: string) => {
    const out = Buffer.alloc(part);
    let block = createHash('sha256').update(seed).digest();
    for (let at = 0; at < part; at += 32) {
      block.copy(out, at);
      block = createHash('sha256').update(block).digest();
    }
    return out;
  };
  const text = Buffer.alloc(part, 'the quick brown fox jumps over the lazy dog, again and again. ');
  await writeFile(file, Buffer.concat([random('a'), Buffer.alloc(part), text, random('b')]));
}

const PUT_ROUTE = '"route":"/v1/chunks/:id"';

for (const storage of ['local', 's3'] as const) {
  let srv: TestServer;
  let dir: string;
  test.before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'dv-stream-'));
    srv = await startTestServer({ storage, chunker: TEST_CHUNKER });
  });
  test.after.always(async () => {
    await srv?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test.serial(
    `[${storage}] a backup sends its chunks over one stream and restores bit for bit`,
    async (t) => {
      const image = path.join(dir, 'disk.img');
      await makeImage(image);
      const env = { DISKVAULT_SERVER: srv.url, DISKVAULT_TOKEN: await srv.makeToken('agent', ['st1']) };
      const before = srv.logs.length;
      const r = await runCli(['backup', image, '--host', 'st1', '--disk', 'sda', '--json'], env);
      t.is(r.code, 0, r.stderr);
      const s = r.summary!;
      t.true(s.newChunks >= 40, `only ${s.newChunks} chunks: the test needs many in flight`);
      const logs = srv.logs.slice(before);
      const streams = logs.filter((l) => l.includes('"msg":"chunk stream"')).map((l) => JSON.parse(l));
      t.is(streams.length, 1, logs.join('\n'));
      t.is(streams[0].outcome, 'done');
      t.is(streams[0].chunks, s.newChunks);
      t.is(streams[0].bytesIn, s.bytesUploaded);
      // Each chunk was read from the socket straight into the buffer it was checked in.
      t.is(streams[0].reads, 'direct');
      t.is(logs.filter((l) => l.includes(PUT_ROUTE)).length, 0, 'no chunk went as its own request');

      const out = path.join(dir, 'restored.img');
      const back = await runCli(['restore', s.snapshot, out, '--json'], env);
      t.is(back.code, 0, back.stderr);
      t.is(await sha256File(out), await sha256File(image));
    },
  );

  test.serial(
    `[${storage}] a server started with --no-streams offers neither stream and takes a backup and a restore one chunk per request`,
    async (t) => {
      const plain = await startTestServer({ storage, chunker: TEST_CHUNKER, streams: false });
      try {
        const image = path.join(dir, 'no-streams.img');
        await makeImage(image);
        const token = await plain.makeToken('agent', ['ns1']);
        const env = { DISKVAULT_SERVER: plain.url, DISKVAULT_TOKEN: token };
        const session = await call(plain.url, token, 'POST', '/v1/sessions', {
          json: { host: 'ns1', disk: 'x' },
        });
        t.is(session.status, 201);
        t.is(session.json.chunkStream, undefined);
        // The route itself is absent, as on a server that predates it.
        const client = new DiskvaultClient({ server: plain.url, token, attempts: 1 });
        t.is(await client.openChunkStream(session.json.id), undefined);
        t.is(await client.openChunkFetchStream(), undefined);
        client.close();
        const before = plain.logs.length;
        const r = await runCli(['backup', image, '--host', 'ns1', '--disk', 'sda', '--json'], env);
        t.is(r.code, 0, r.stderr);
        const s = r.summary!;
        const logs = plain.logs.slice(before);
        t.is(logs.filter((l) => l.includes('"msg":"chunk stream"')).length, 0, logs.join('\n'));
        t.is(logs.filter((l) => l.includes(PUT_ROUTE)).length, s.newChunks);
        const lease = await call(plain.url, token, 'POST', `/v1/snapshots/${s.snapshot}/lease`, { json: {} });
        t.is(lease.status, 201);
        t.is(lease.json.chunkFetchStream, undefined);
        await call(plain.url, token, 'DELETE', `/v1/leases/${lease.json.leaseId}`);
        const out = path.join(dir, 'no-streams-restored.img');
        const mark = plain.logs.length;
        const back = await runCli(['restore', s.snapshot, out, '--json'], env);
        t.is(back.code, 0, back.stderr);
        t.is(await sha256File(out), await sha256File(image));
        t.is(plain.logs.slice(mark).filter((l) => l.includes('"msg":"chunk fetch stream"')).length, 0);
      } finally {
        await plain.stop();
      }
    },
  );

  test.serial(`[${storage}] the stream is refused to whom PUT refuses, with the same answer`, async (t) => {
    const owner = await srv.makeToken('agent', ['st3']);
    const other = await srv.makeToken('agent', ['st3']);
    const reader = await srv.makeToken('reader');
    const session = await openSession(srv.url, owner, 'st3');
    const c = chunkOf('stream-auth');
    for (const [who, token] of [
      ['no token', ''],
      ['a wrong token', 'dv_0000000000000000_00'],
      ['a reader', reader],
      ["another token's session", other],
    ] as const) {
      const put = await call(srv.url, token || undefined, 'PUT', `/v1/chunks/${c.id}?session=${session}`, {
        body: c.data,
      });
      const client = new DiskvaultClient({ server: srv.url, token, attempts: 1 });
      try {
        const err = await t.throwsAsync(client.openChunkStream(session));
        t.true(isDiskvaultError(err), `${who}: ${String(err)}`);
        if (!isDiskvaultError(err)) continue;
        t.is(err.code, put.json.code, who);
        t.is(err.message, put.json.message, who);
        t.is(err.details?.status, put.status, who);
      } finally {
        client.close();
      }
    }
    t.deepEqual(await srv.repo.filterMissing(session, [c.id]), [c.id]);
  });

  test.serial(`[${storage}] a bad chunk is refused through the stream exactly as through PUT`, async (t) => {
    const token = await srv.makeToken('agent', ['st2']);
    const session = await openSession(srv.url, token, 'st2');
    const real = chunkOf('stream-real');
    const claimed = chunkOf('stream-claimed');
    const big = Buffer.alloc(zstdBound(TEST_CHUNKER.max) + 1, 1);
    const cases: {
      what: string;
      id: string;
      body: Buffer;
      encoding: 'raw' | 'zstd' | 'sealed';
      code: string;
    }[] = [
      {
        what: 'sealed, in a plain session',
        id: real.id,
        body: real.data,
        encoding: 'sealed',
        code: 'InvalidInput',
      },
      { what: 'wrong id, raw', id: claimed.id, body: real.data, encoding: 'raw', code: 'HashMismatch' },
      {
        what: 'wrong id, zstd',
        id: claimed.id,
        body: zstd(real.data),
        encoding: 'zstd',
        code: 'HashMismatch',
      },
      { what: 'not zstd', id: real.id, body: real.data, encoding: 'zstd', code: 'InvalidInput' },
      { what: 'too large', id: real.id, body: big, encoding: 'zstd', code: 'TooLarge' },
      { what: 'empty', id: real.id, body: Buffer.alloc(0), encoding: 'raw', code: 'InvalidInput' },
    ];
    const client = new DiskvaultClient({ server: srv.url, token, attempts: 1 });
    try {
      for (const c of cases) {
        const put = await call(srv.url, token, 'PUT', `/v1/chunks/${c.id}?session=${session}`, {
          body: c.body,
          headers:
            c.encoding === 'zstd'
              ? { 'content-encoding': 'zstd' }
              : c.encoding === 'sealed'
                ? { 'content-type': SEALED_CHUNK_CONTENT_TYPE }
                : {},
        });
        t.is(put.json.code, c.code, `${c.what}: ${put.bytes.toString()}`);
        // A refusal ends the stream it came on: each case gets its own.
        const stream = await client.openChunkStream(session);
        if (!stream) return t.fail('the server offers no chunk stream');
        const err = await t.throwsAsync(stream.put(c.id, c.body, c.encoding));
        t.true(isDiskvaultError(err), `${c.what}: ${String(err)}`);
        if (!isDiskvaultError(err)) continue;
        t.is(err.code, put.json.code, c.what);
        t.is(err.message, put.json.message, c.what);
        t.is(err.details?.status, put.status, c.what);
      }
      // Nothing was stored under the claimed id or the real one by any refused upload.
      t.deepEqual(await srv.repo.filterMissing(session, [claimed.id, real.id]), [claimed.id, real.id]);
      // The same stream takes good chunks after all: first stored for this tenant, then already held.
      const stream = await client.openChunkStream(session);
      if (!stream) return t.fail('the server offers no chunk stream');
      t.deepEqual(await stream.put(real.id, zstd(real.data), 'zstd'), { id: real.id, stored: true });
      t.deepEqual(await stream.put(real.id, real.data, 'raw'), { id: real.id, stored: false });
      await stream.end();
      t.deepEqual(await srv.repo.filterMissing(session, [claimed.id, real.id]), [claimed.id]);
    } finally {
      client.close();
    }
  });
}

test('a chunk stream takes no chunk once its token is revoked, as the next request would not', async (t) => {
  const srv = await startTestServer({ storage: 'local', chunker: TEST_CHUNKER });
  t.teardown(() => srv.stop());
  const agent = await srv.makeToken('agent', ['web1']);
  const client = new DiskvaultClient({ server: srv.url, token: agent });
  t.teardown(() => client.close());
  const session = await openSession(srv.url, agent, 'web1');
  const stream = await client.openChunkStream(session);
  if (!stream) return t.fail('the server offers no chunk stream');
  const first = chunkOf('before the revocation');
  t.deepEqual(await stream.put(first.id, first.data, 'raw'), { id: first.id, stored: true });
  const revoked = await call(srv.url, srv.adminToken, 'DELETE', `/v1/tokens/${agent.split('_')[1]}`);
  t.is(revoked.status, 204, revoked.bytes.toString());
  const at = Date.now();
  // The stream looks at its token again at most a second after it last did: poll to a deadline.
  let refused: unknown;
  for (let i = 0; Date.now() - at < 5_000; i++) {
    const c = chunkOf(`after the revocation ${i}`);
    try {
      await stream.put(c.id, c.data, 'raw');
    } catch (err) {
      refused = err;
      break;
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  t.true(isDiskvaultError(refused), String(refused));
  if (isDiskvaultError(refused)) t.is(refused.code, 'Unauthorized');
  t.true(Date.now() - at < 2_500, `refused ${Date.now() - at} ms after the revocation`);
});
