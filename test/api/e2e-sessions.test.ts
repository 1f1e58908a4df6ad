import { randomBytes } from 'node:crypto';
import test from 'ava';
import { e2eChunkId, sealChunk } from '../../agent/e2e/chunk-sealing.js';
import { deriveE2eKeys, type E2eKeys, sealSecrets, secretsContext } from '../../agent/e2e/e2e-keys.js';
import { MANIFEST_CONTENT_TYPE } from '../../api/protocol.js';
import { encodeManifest } from '../../repo-engine/manifest-codec.js';
import { SEALED_CHUNK_CONTENT_TYPE } from '../../repo-engine/sealed-chunk.js';
import { call, chunkOf, putChunk } from '../helpers/api-client.js';
import { startTestServer, TEST_CHUNKER } from '../helpers/server.js';

/**
 * The server's side of end-to-end keys over real HTTP: sessions opened by key proof, sealed chunks checked
 * by structure and key domain only, another key's uploads kept out of this key's domain, and the routes
 * that would need plaintext refusing sealed snapshots.
 */

function sealed(keys: E2eKeys, data: Buffer): { id: string; body: Buffer } {
  const { id, kid } = e2eChunkId(keys, data);
  return { id: id.toString('hex'), body: sealChunk(keys, kid, data.length, data, false) };
}

async function openE2e(url: string, token: string, host: string, keys: E2eKeys) {
  return call(url, token, 'POST', '/v1/sessions', {
    json: { host, disk: 'sda', e2e: { proof: keys.proof.toString('base64') } },
  });
}

const putSealed = (url: string, token: string, session: string, id: string, body: Buffer) =>
  call(url, token, 'PUT', `/v1/chunks/${id}?session=${session}`, {
    body,
    headers: { 'content-type': SEALED_CHUNK_CONTENT_TYPE },
  });

function e2eManifest(keys: E2eKeys, host: string, chunks: { id: string; length: number }[]): Buffer {
  const size = chunks.reduce((n, c) => n + c.length, 0);
  const context = secretsContext({ host, disk: 'sda', size, chunkCount: chunks.length });
  return encodeManifest(
    {
      formatVersion: 1,
      host,
      disk: 'sda',
      time: new Date().toISOString(),
      size,
      sha256: '',
      chunker: TEST_CHUNKER,
      tags: [],
      unreadable: [],
      sourceFormat: 'raw',
      chunkCount: chunks.length,
      e2e: { keyId: keys.keyId, sealed: sealSecrets(keys, { sha256: 'a'.repeat(64) }, context) },
    },
    chunks,
  );
}

test('sealed chunks: accepted in their key domain only, structure-checked, never hashed; another key cannot occupy or read them; image and share refuse the snapshot', async (t) => {
  const srv = await startTestServer();
  try {
    const a = deriveE2eKeys(randomBytes(32));
    const b = deriveE2eKeys(randomBytes(32));
    const agentA = await srv.makeToken('agent', ['h1']);
    const agentB = await srv.makeToken('agent', ['h2']);

    const sa = await openE2e(srv.url, agentA, 'h1', a);
    t.is(sa.status, 201, sa.bytes.toString());
    t.is(sa.json.keyId, a.keyId);
    const sid = sa.json.id as string;

    const data = chunkOf('shared', 30_000).data;
    const chunk = sealed(a, data);
    // Neither the plain SHA-256 nor the keyed HMAC is the id the server sees.
    t.not(chunk.id, chunkOf('shared', 30_000).id);

    // A plaintext upload in an end-to-end session is refused, and so is a sealed chunk of another key.
    const plain = await putChunk(srv.url, agentA, sid, chunkOf('plain'));
    t.is(plain.status, 400);
    t.regex(plain.json.message, /must be sealed/);
    const otherKey = sealed(b, data);
    const wrongKey = await putSealed(srv.url, agentA, sid, otherKey.id, otherKey.body);
    t.is(wrongKey.status, 400);
    t.regex(wrongKey.json.message, new RegExp(`sealed with key ${b.keyId}, the session's key is ${a.keyId}`));
    // An id the keyed id does not give in this domain (a chunk moved under another id): 422.
    const moved = await putSealed(srv.url, agentA, sid, 'ab'.repeat(32), chunk.body);
    t.is(moved.status, 422);
    t.is(moved.json.code, 'HashMismatch');
    // A truncated sealed chunk: 400, nothing stored.
    const cut = await putSealed(
      srv.url,
      agentA,
      sid,
      chunk.id,
      chunk.body.subarray(0, chunk.body.length - 1),
    );
    t.is(cut.status, 400);

    const ok = await putSealed(srv.url, agentA, sid, chunk.id, chunk.body);
    t.is(ok.status, 201, ok.bytes.toString());
    const manifest = e2eManifest(a, 'h1', [{ id: chunk.id, length: data.length }]);
    const committed = await call(srv.url, agentA, 'POST', `/v1/sessions/${sid}/commit`, {
      body: manifest,
      headers: { 'content-type': MANIFEST_CONTENT_TYPE },
    });
    t.is(committed.status, 201, committed.bytes.toString());
    const snap = committed.json.snapshot;
    t.is(snap.sha256, '');
    t.is(snap.e2e.keyId, a.keyId);

    // The chunk comes back exactly as sealed.
    const got = await call(srv.url, agentA, 'GET', `/v1/chunks/${chunk.id}`, {
      headers: { 'accept-encoding': 'zstd' },
    });
    t.is(got.status, 200);
    t.is(got.headers.get('content-type'), SEALED_CHUNK_CONTENT_TYPE);
    t.true(got.bytes.equals(chunk.body));

    // Key B's session: its uploads land in its own domain; it cannot put anything under A's id.
    const sb = await openE2e(srv.url, agentB, 'h2', b);
    t.is(sb.status, 201);
    const forged = Buffer.from(otherKey.body);
    const intoA = await putSealed(srv.url, agentB, sb.json.id, chunk.id, forged);
    t.is(intoA.status, 422);
    // A session claiming key A's id without its proof: only an admin may open one by key id.
    const claim = await call(srv.url, agentB, 'POST', '/v1/sessions', {
      json: { host: 'h2', disk: 'sda', e2e: { keyId: a.keyId } },
    });
    t.is(claim.status, 403);
    // And A's chunk is still A's: it comes back unchanged.
    const after = await call(srv.url, agentA, 'GET', `/v1/chunks/${chunk.id}`, {
      headers: { 'accept-encoding': 'zstd' },
    });
    t.true(after.bytes.equals(chunk.body));

    // A plaintext session cannot commit an end-to-end manifest, nor upload sealed chunks.
    const plainSession = await call(srv.url, agentA, 'POST', '/v1/sessions', {
      json: { host: 'h1', disk: 'sda' },
    });
    const sealedInPlain = await putSealed(srv.url, agentA, plainSession.json.id, chunk.id, chunk.body);
    t.is(sealedInPlain.status, 400);
    t.regex(sealedInPlain.json.message, /needs an upload session opened with its key/);
    const e2eInPlain = await call(srv.url, agentA, 'POST', `/v1/sessions/${plainSession.json.id}/commit`, {
      body: manifest,
      headers: { 'content-type': MANIFEST_CONTENT_TYPE },
    });
    t.is(e2eInPlain.status, 400);

    // What needs plaintext on the server refuses the snapshot with a clear 409.
    const image = await call(srv.url, srv.adminToken, 'GET', `/v1/snapshots/${snap.id}/image`);
    t.is(image.status, 409);
    t.is(image.json.code, 'Conflict');
    t.is(image.json.details.reason, 'end-to-end');
    t.regex(image.json.message, /encrypted end to end/);
    const share = await call(srv.url, srv.adminToken, 'POST', '/v1/shares', {
      json: { snapshot: snap.id, expiresInSeconds: 3600 },
    });
    t.is(share.status, 409);
    t.is(share.json.details.reason, 'end-to-end');

    // Admin work without any key: verify reading every object, stats, delete and gc.
    const verify = await srv.repo.verify({ readData: true });
    t.true(verify.ok, JSON.stringify(verify.problems));
    t.is(verify.chunksChecked, 1);
    // The index rebuilt from storage keeps the snapshot's end-to-end part.
    await srv.repo.reindex();
    t.deepEqual(srv.repo.getSnapshot(snap.id)?.e2e, snap.e2e);
  } finally {
    await srv.stop();
  }
});
