import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { request } from 'node:http';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { IDS_CONTENT_TYPE } from '../../api/protocol.js';
import { createToken } from '../../api/token-store.js';
import { backup, call, chunkOf, openSession } from '../helpers/api-client.js';
import { spawnServer } from '../helpers/server.js';

// What one request may cost the server before its body is understood: JSON bodies are small, the missing
// query is checked for shape as it arrives, and neither a body over a cap nor one of the wrong shape is
// ever parsed whole.

const MiB = 1024 * 1024;

/** `{"key":[{},{},...]}` of about `bytes` bytes: millions of objects for JSON.parse. */
function objectFlood(key: string, bytes: number): Buffer {
  const n = Math.floor((bytes - key.length - 8) / 3);
  return Buffer.from(`{"${key}":[${'{},'.repeat(n - 1)}{}]}`);
}

async function peakRssMiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/VmHWM:\s+(\d+)/.exec(status)?.[1]) / 1024;
}

/** Declares a JSON body of `declared` bytes, sends only its first bytes, and returns the answer. */
function answerToHead(
  url: string,
  token: string,
  path: string,
  declared: number,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(`${url}${path}`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${token}`,
        'content-type': 'application/json',
        'content-length': String(declared),
      },
    });
    req.on('response', (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => {
        resolve({ status: res.statusCode ?? 0, body });
        req.destroy();
      });
    });
    req.on('error', reject);
    req.write('{"ids":[');
  });
}

const ids = (n: number, seed: string) =>
  Array.from({ length: n }, (_, i) => createHash('sha256').update(`${seed} ${i}`).digest());

test('oversized or misshapen JSON bodies are refused before they are parsed, and cost the server no memory', async (t) => {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'dv-limits-'));
  const srv = await spawnServer({ dataDir });
  try {
    const { token } = await createToken(dataDir, { role: 'agent', hosts: ['h1'] });
    const sid = await openSession(srv.url, token, 'h1', 'sda');
    const missingPath = `/v1/sessions/${sid}/missing`;
    const before = await peakRssMiB(srv.process.pid as number);

    // The attack as reported: four concurrent 8 MiB floods of empty objects to the missing query.
    const flood = objectFlood('ids', 8 * MiB);
    const answers = await Promise.all(
      [0, 1, 2, 3].map(() =>
        call(srv.url, token, 'POST', missingPath, {
          body: flood,
          headers: { 'content-type': 'application/json' },
        }).catch((err: Error) => ({ status: 0, json: undefined, error: err })),
      ),
    );
    // The server answers 413 as soon as it has the head, and closes: a client still sending may see
    // the connection cut instead of the answer; those that read it get the usual body.
    for (const a of answers.filter((a) => a.status !== 0)) {
      t.is(a.status, 413);
      t.is(a.json.code, 'TooLarge');
      t.regex(a.json.message, /missing query of \d+ bytes exceeds the limit of 4194304 bytes/);
    }
    // A client that sends the head and waits always reads the answer, before any more of the body.
    const early = await answerToHead(srv.url, token, missingPath, 8 * MiB);
    t.is(early.status, 413);
    t.is(JSON.parse(early.body).code, 'TooLarge');
    t.regex(
      JSON.parse(early.body).message,
      /missing query of 8388608 bytes exceeds the limit of 4194304 bytes/,
    );
    // Under the cap, the same flood is refused by its shape at its first object.
    const under = await call(srv.url, token, 'POST', missingPath, {
      body: objectFlood('ids', 4 * MiB - 64),
      headers: { 'content-type': 'application/json' },
    }).catch(() => undefined);
    if (under) {
      t.is(under.status, 400);
      t.is(under.json.code, 'InvalidInput');
      t.regex(under.json.message, /every id must be 64 lowercase hex characters/);
    }
    // Every other JSON body is settings: 64 KiB at most.
    const big = await call(srv.url, token, 'POST', '/v1/sessions', {
      body: objectFlood('host', 100 * 1024),
      headers: { 'content-type': 'application/json' },
    });
    t.is(big.status, 413);
    t.deepEqual(Object.keys(big.json).sort(), ['code', 'message']);
    t.is(big.json.code, 'TooLarge');
    const grown = (await peakRssMiB(srv.process.pid as number)) - before;
    t.log(`server peak RSS grew by ${grown.toFixed(0)} MiB`);
    t.true(grown < 64, `peak RSS grew by ${grown.toFixed(0)} MiB`);

    // The server still serves, and the session still works.
    t.is((await backup(srv.url, token, 'h1', 'sda', [chunkOf('after')])).snapshot.host, 'h1');
  } finally {
    await srv.kill('SIGTERM');
    await rm(dataDir, { recursive: true, force: true });
  }
});

test('the largest missing queries an agent sends still work, binary and JSON', async (t) => {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'dv-limits-'));
  const srv = await spawnServer({ dataDir });
  try {
    const { token } = await createToken(dataDir, { role: 'agent', hosts: ['h1'] });
    const known = chunkOf('known');
    await backup(srv.url, token, 'h1', 'sda', [known]);
    const sid = await openSession(srv.url, token, 'h1', 'sda');

    // 50,000 ids (the most one query may carry), the known chunk among them and one id twice.
    const asked: Buffer[] = ids(50_000, 'big');
    asked[10] = Buffer.from(known.id, 'hex');
    asked[20] = asked[30] as Buffer;
    const binary = await call(srv.url, token, 'POST', `/v1/sessions/${sid}/missing`, {
      body: Buffer.concat(asked),
      headers: { 'content-type': IDS_CONTENT_TYPE },
    });
    t.is(binary.status, 200);
    t.is(binary.bytes.length, (50_000 - 2) * 32);

    // The JSON form of the same query is 3.3 MB: under its own cap, scanned rather than parsed.
    const json = await call(srv.url, token, 'POST', `/v1/sessions/${sid}/missing`, {
      json: { ids: asked.map((b) => b.toString('hex')) },
    });
    t.is(json.status, 200);
    t.is(json.json.missing.length, 50_000 - 2);
    t.is(json.json.missing.join(''), binary.bytes.toString('hex'));
    // Pretty-printed JSON is fine too.
    const pretty = await call(srv.url, token, 'POST', `/v1/sessions/${sid}/missing`, {
      body: Buffer.from(JSON.stringify({ ids: [known.id, asked[0]?.toString('hex')] }, null, 2)),
      headers: { 'content-type': 'application/json' },
    });
    t.deepEqual(pretty.json, { missing: [asked[0]?.toString('hex')] });
    // One id more than the limit is refused.
    const tooMany = await call(srv.url, token, 'POST', `/v1/sessions/${sid}/missing`, {
      json: { ids: [...asked, asked[0] as Buffer].map((b) => b.toString('hex')) },
    });
    t.is(tooMany.status, 400);
    t.regex(tooMany.json.message, /at most 50000 ids per query/);
  } finally {
    await srv.kill('SIGTERM');
    await rm(dataDir, { recursive: true, force: true });
  }
});
