import { randomBytes } from 'node:crypto';
import test from 'ava';
import { e2eChunkId, sealChunk } from '../../agent/e2e/chunk-sealing.js';
import { deriveE2eKeys } from '../../agent/e2e/e2e-keys.js';
import type { Repository } from '../../repo-engine/repository.js';
import { SEALED_CHUNK_CONTENT_TYPE } from '../../repo-engine/sealed-chunk.js';
import { backup, call, chunkOf, missingFor } from '../helpers/api-client.js';
import { startTestServer, type TestServer } from '../helpers/server.js';

/**
 * POST /v1/chunks/damaged: a reader (a restore, `verify --key`) tells the server of chunks it found wrong.
 * The server believes nothing it can check itself: it reads its stored copy again, marks it damaged only
 * when that copy is bad (so the missing query reports it and the next backup replaces it), and leaves a
 * good copy alone. A plaintext repository, so a flipped byte keeps the object's structure and only a full
 * read sees it, as only a restore's own hash check would.
 */
let srv: TestServer;
let tokenA: string;
let tokenB: string;

test.before(async () => {
  srv = await startTestServer({ encryption: 'none', cacheBytes: 0 });
  tokenA = await srv.makeToken('agent', ['da-web1'], 'tenant-a');
  tokenB = await srv.makeToken('agent', ['db-web1'], 'tenant-b');
});

test.after.always(async () => {
  await srv?.stop();
});

const report = (token: string, chunks: unknown) =>
  call(srv.url, token, 'POST', '/v1/chunks/damaged', { json: { chunks } });

/** Flips one byte of the chunk's stored payload, its header and length left as they are. */
async function flipStoredByte(id: string): Promise<void> {
  const key = (srv.repo as Repository).storedObjects.chunkKey(id);
  const object = Buffer.from(await srv.storage.getBytes(key));
  object[object.length - 100] ^= 0x01;
  await srv.storage.put(key, object);
}

test.serial(
  'a reported chunk whose stored copy is bad is marked damaged, reported missing and healed by the next backup; a good copy and another tenant’s chunk are left alone',
  async (t) => {
    const x = chunkOf('damage-x', 200_000);
    const y = chunkOf('damage-y', 200_000);
    await backup(srv.url, tokenA, 'da-web1', 'sda', [x, y]);

    // The copy checks out: the reader's trouble lay elsewhere, and nothing changes.
    const good = await report(tokenA, [{ id: x.id, detail: 'its bytes hash to something else' }]);
    t.is(good.status, 200, good.bytes.toString());
    t.deepEqual(good.json, { chunks: [{ id: x.id, status: 'good' }] });
    t.deepEqual(await missingFor(srv.url, tokenA, 'da-web1', [x.id, y.id]), []);

    // Another tenant cannot learn of the chunk, nor touch it.
    const other = await report(tokenB, [{ id: x.id, detail: 'made up' }]);
    t.is(other.status, 200);
    t.deepEqual(other.json, { chunks: [{ id: x.id, status: 'absent' }] });

    // A flipped byte: the structure holds, so only a full read sees it, as the report makes the server do.
    await flipStoredByte(x.id);
    const bad = await report(tokenA, [
      { id: x.id, detail: 'its bytes hash to something else' },
      { id: y.id, detail: 'reported by mistake' },
    ]);
    t.is(bad.status, 200, bad.bytes.toString());
    t.deepEqual(bad.json, {
      chunks: [
        { id: x.id, status: 'damaged' },
        { id: y.id, status: 'good' },
      ],
    });
    t.deepEqual(await missingFor(srv.url, tokenA, 'da-web1', [x.id, y.id]), [x.id]);
    t.true(srv.logs.some((l) => l.includes(`chunk ${x.id}: stored copy is damaged`)));

    // The next backup that has it uploads it again, and the copy is good from then on.
    const next = await backup(srv.url, tokenA, 'da-web1', 'sda', [x, y]);
    t.is(next.uploaded, 1);
    t.deepEqual(await missingFor(srv.url, tokenA, 'da-web1', [x.id, y.id]), []);
    const healed = await report(tokenA, [{ id: x.id, detail: 'checking again' }]);
    t.deepEqual(healed.json, { chunks: [{ id: x.id, status: 'good' }] });
  },
);

test.serial('a malformed damage report is refused with 400 and a code, and changes nothing', async (t) => {
  const z = chunkOf('damage-z', 50_000);
  await backup(srv.url, tokenA, 'da-web1', 'sdb', [z]);
  const cases: [unknown, RegExp][] = [
    [[], /1 to 1000/],
    [Array.from({ length: 1001 }, () => ({ id: z.id, detail: 'x' })), /1 to 1000/],
    [[{ id: 'not-hex', detail: 'x' }], /chunk id must be 64 lowercase hex/],
    [[{ id: z.id }], /needs a detail/],
    [[{ id: z.id, detail: 'x'.repeat(501) }], /at most 500/],
    [['just a string'], /JSON object/],
  ];
  for (const [chunks, message] of cases) {
    const r = await report(tokenA, chunks);
    t.is(r.status, 400, JSON.stringify(chunks).slice(0, 80));
    t.is(r.json.code, 'InvalidInput');
    t.regex(r.json.message, message);
  }
  // The largest report allowed is taken whole: 1000 chunks, each with a detail of 500 characters.
  const largest = await report(
    tokenA,
    Array.from({ length: 1000 }, () => ({ id: z.id, detail: 'x'.repeat(500) })),
  );
  t.is(largest.status, 200, largest.bytes.toString().slice(0, 200));
  t.is(largest.json.chunks.length, 1000);
  t.true(largest.json.chunks.every((c: { status: string }) => c.status === 'good'));
  const noBody = await call(srv.url, tokenA, 'POST', '/v1/chunks/damaged', { json: { ids: [z.id] } });
  t.is(noBody.status, 400);
  t.deepEqual(await missingFor(srv.url, tokenA, 'da-web1', [z.id]), []);
  const anonymous = await call(srv.url, undefined, 'POST', '/v1/chunks/damaged', {
    json: { chunks: [{ id: z.id, detail: 'x' }] },
  });
  t.is(anonymous.status, 401);
});

test.serial(
  'a global reader’s report never marks a sealed chunk damaged on its word; the server still checks the copy, and the key’s tenant is believed',
  async (t) => {
    const agentE = await srv.makeToken('agent', ['de-web1'], 'tenant-e');
    const globalReader = await srv.makeToken('reader');
    const tenantReader = await srv.makeToken('reader', [], 'tenant-e');
    const keys = deriveE2eKeys(randomBytes(32));
    const data = chunkOf('damage-sealed', 30_000).data;
    const { id: kid, kid: keyedId } = e2eChunkId(keys, data);
    const id = kid.toString('hex');
    const body = sealChunk(keys, keyedId, data.length, data, false);

    /** The ids an end-to-end session of tenant-e's key would have to upload (a damaged chunk is one). */
    const missingSealed = async (): Promise<string[]> => {
      const opened = await call(srv.url, agentE, 'POST', '/v1/sessions', {
        json: { host: 'de-web1', disk: 'sda', e2e: { proof: keys.proof.toString('base64') } },
      });
      t.is(opened.status, 201, opened.bytes.toString());
      const sid = opened.json.id as string;
      const r = await call(srv.url, agentE, 'POST', `/v1/sessions/${sid}/missing`, { json: { ids: [id] } });
      await call(srv.url, agentE, 'DELETE', `/v1/sessions/${sid}`);
      return r.json.missing;
    };
    t.deepEqual(await missingSealed(), [id]);
    const opened = await call(srv.url, agentE, 'POST', '/v1/sessions', {
      json: { host: 'de-web1', disk: 'sda', e2e: { proof: keys.proof.toString('base64') } },
    });
    const put = await call(srv.url, agentE, 'PUT', `/v1/chunks/${id}?session=${opened.json.id}`, {
      body,
      headers: { 'content-type': SEALED_CHUNK_CONTENT_TYPE },
    });
    t.is(put.status, 201, put.bytes.toString());
    await call(srv.url, agentE, 'DELETE', `/v1/sessions/${opened.json.id}`);
    t.deepEqual(await missingSealed(), []);

    // A global reader holds no key and may change nothing: its word alone does not mark the chunk.
    const byReader = await report(globalReader, [{ id, detail: 'its authentication tag does not match' }]);
    t.is(byReader.status, 200, byReader.bytes.toString());
    t.deepEqual(byReader.json, { chunks: [{ id, status: 'good' }] });
    t.deepEqual(await missingSealed(), []);
    const unknown = 'ab'.repeat(32);
    const absent = await report(globalReader, [{ id: unknown, detail: 'x' }]);
    t.deepEqual(absent.json, { chunks: [{ id: unknown, status: 'absent' }] });

    // It still has the server check its copy: a plaintext copy found bad is marked, as for anyone.
    const p = chunkOf('damage-reader-plain', 200_000);
    await backup(srv.url, tokenA, 'da-web1', 'sdc', [p]);
    await flipStoredByte(p.id);
    const plain = await report(globalReader, [{ id: p.id, detail: 'its bytes hash to something else' }]);
    t.deepEqual(plain.json, { chunks: [{ id: p.id, status: 'damaged' }] });
    t.deepEqual(await missingFor(srv.url, tokenA, 'da-web1', [p.id]), [p.id]);

    // A token of the tenant holding the sealed chunk is believed (a reader of it too): the chunk is marked.
    const byTenant = await report(tenantReader, [{ id, detail: 'its authentication tag does not match' }]);
    t.deepEqual(byTenant.json, { chunks: [{ id, status: 'damaged' }] });
    t.deepEqual(await missingSealed(), [id]);
  },
);
