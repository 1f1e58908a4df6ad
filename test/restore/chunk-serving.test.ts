import { createHash, randomBytes } from 'node:crypto';
import { truncate } from 'node:fs/promises';
import http from 'node:http';
import test from 'ava';
import { DiskvaultClient } from '../../agent/client.js';
import { isDiskvaultError } from '../../common/errors.js';
import { corruptStoredChunk, storedChunkFile } from '../helpers/backup-e2e.js';
import { pollUntil } from '../helpers/poll.js';
import { startTestServer, type TestServer } from '../helpers/server.js';

/**
 * Who verifies what on the download path (docs/restore.md): the server hands a zstd-accepting agent the stored
 * payload after structural checks only, the agent's client checks the hash, and anything else gets bytes the
 * engine has verified.
 */

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

function compressible(n: number): Buffer {
  const line = Buffer.from('diskvault restore serves stored payloads as they are. ');
  const out = Buffer.alloc(n);
  for (let at = 0; at < n; at += line.length) line.copy(out, at);
  out.writeUInt32BE(n, 0);
  return out;
}

async function withServer(fn: (s: TestServer, client: DiskvaultClient) => Promise<void>): Promise<void> {
  // No chunk cache: corruption written to disk must be what the server reads.
  const server = await startTestServer({ cacheBytes: 0 });
  const client = new DiskvaultClient({ server: server.url, token: server.adminToken, backoffMs: 200 });
  try {
    await fn(server, client);
  } finally {
    client.close();
    await server.stop();
  }
}

async function upload(client: DiskvaultClient, chunks: Buffer[]): Promise<void> {
  const session = await client.createSession('h1', 'sda');
  for (const c of chunks) await client.putChunk(session.id, sha256(c), c, 'raw');
  await client.abort(session.id);
}

function storedFile(server: TestServer, id: string): Promise<string> {
  return storedChunkFile(server.dataDir, id);
}

function plainGet(server: TestServer, id: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get(
      `${server.url}/v1/chunks/${id}`,
      { headers: { authorization: `Bearer ${server.adminToken}` } },
      (res) => {
        const parts: Buffer[] = [];
        res.on('data', (p: Buffer) => parts.push(p));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(parts).toString() }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
  });
}

const chunkGets = (server: TestServer, id: string) =>
  server.logs.filter((l) => l.includes(`"/v1/chunks/${id}"`) && l.includes('"method":"GET"')).length;

test('a chunk corrupted in storage reaches the agent unhashed, and the agent refuses it naming the chunk', async (t) => {
  await withServer(async (server, client) => {
    const chunk = compressible(200_000);
    const id = sha256(chunk);
    await upload(client, [chunk]);
    const good = await client.getChunkPayload(id, chunk.length);
    t.is(good.encoding, 'zstd');
    t.is(good.rawLength, chunk.length);

    await corruptStoredChunk(server.dataDir, id, { resealed: true });
    // Structurally sound, so the server serves it as stored: the hash check is the agent's.
    const served = await client.getChunkPayload(id, chunk.length);
    t.is(served.encoding, 'zstd');
    t.notDeepEqual(served.payload, good.payload);
    const err = await t.throwsAsync(client.getChunk(id, chunk.length));
    t.true(isDiskvaultError(err) && ['HashMismatch', 'Corrupt'].includes(err.code), String(err));
    t.regex(err?.message ?? '', new RegExp(`chunk ${id}`));

    // A client that does not take zstd may not verify: the engine hashes for it and refuses.
    const plain = await plainGet(server, id);
    t.is(plain.status, 500);
    t.regex(plain.body, /"code":"Corrupt"/);
    t.regex(plain.body, new RegExp(id));
  });
});

test('a structurally broken chunk is answered 500 Corrupt once, and the client does not retry it', async (t) => {
  await withServer(async (server, client) => {
    const chunk = compressible(100_000);
    const id = sha256(chunk);
    await upload(client, [chunk]);
    await truncate(await storedFile(server, id), 5);
    const before = chunkGets(server, id);
    const err = await t.throwsAsync(client.getChunk(id, chunk.length));
    t.true(isDiskvaultError(err) && err.code === 'Corrupt', String(err));
    t.regex(err?.message ?? '', new RegExp(`chunk ${id}`));
    t.is(chunkGets(server, id) - before, 1, 'exactly one request: Corrupt is not worth retrying');
  });
});

test('the client reads no more of a chunk body than the manifest length allows', async (t) => {
  await withServer(async (_server, client) => {
    // Random bytes do not compress: stored and served raw, 64 KiB long.
    const chunk = randomBytes(64 * 1024);
    const id = sha256(chunk);
    await upload(client, [chunk]);
    const ok = await client.getChunkPayload(id, chunk.length);
    t.is(ok.encoding, 'raw');
    t.deepEqual(ok.payload, chunk);
    const err = await t.throwsAsync(client.getChunkPayload(id, 1000));
    t.true(isDiskvaultError(err) && err.code === 'Corrupt', String(err));
    // A compressed chunk announcing more raw bytes than the manifest's length is refused before reading.
    const big = compressible(150_000);
    await upload(client, [big]);
    const err2 = await t.throwsAsync(client.getChunkPayload(sha256(big), 100_000));
    t.true(isDiskvaultError(err2) && err2.code === 'Corrupt', String(err2));
  });
});

/** GET of a chunk as the agent asks for it, given up after `abortAfterMs`. */
function abandonedGet(server: TestServer, id: string, abortAfterMs: number): Promise<void> {
  return new Promise((resolve) => {
    const req = http.get(`${server.url}/v1/chunks/${id}`, {
      headers: { authorization: `Bearer ${server.adminToken}`, 'accept-encoding': 'zstd' },
    });
    req.on('error', () => resolve());
    req.on('response', (res) => res.resume().on('end', resolve));
    setTimeout(() => req.destroy(), abortAfterMs);
  });
}

test('the buffer a chunk is sent from goes round once the response is sent, and one whose client left is let go', async (t) => {
  // No cache, so no buffer stays held by it: after each request, nothing may be held at all.
  const server = await startTestServer({ cacheBytes: 1, faults: true });
  const client = new DiskvaultClient({ server: server.url, token: server.adminToken });
  try {
    const chunks = [compressible(200_000), randomBytes(200_000), randomBytes(200_000)];
    await upload(client, chunks);
    const [a, b, c] = chunks.map(sha256);
    t.is((await client.getChunk(a)).length, 200_000);
    t.is((await client.getChunk(b)).length, 200_000);
    t.is(server.repo.readBuffers().held, 0, 'released once sent');
    t.true(server.repo.readBuffers().reused >= 1, "b was read into a's buffer");
    // The client gives up while the server is still reading the chunk from (slow) storage.
    server.faults!.setFaults({ delayReadsMs: 400 });
    const reusedBefore = server.repo.readBuffers().reused;
    await abandonedGet(server, c, 50);
    // The late read takes the pooled buffer when it completes; then nothing may keep it.
    const after = await pollUntil(
      () => server.repo.readBuffers(),
      (b) => b.reused > reusedBefore && b.held === 0,
      'the abandoned read to complete and let its buffer go',
      { timeoutMs: 10_000 },
    );
    t.is(after.held, 0, 'not held for ever by a response that was never sent');
    server.faults!.setFaults({});
    t.is((await client.getChunk(c)).length, 200_000, 'and the chunk is served normally after');
  } finally {
    client.close();
    await server.stop();
  }
});
