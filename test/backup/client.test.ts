import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import test from 'ava';
import { compress } from 'zstd-napi';
import { DiskvaultClient } from '../../agent/client.js';
import { DiskvaultError } from '../../common/errors.js';

/** The HTTP client against a scripted node:http server: what it retries, what it does not, what it checks. */
type Handler = (req: http.IncomingMessage, res: http.ServerResponse, n: number) => void;

async function withServer(
  handler: Handler,
  fn: (url: string, count: () => number) => Promise<void>,
): Promise<void> {
  let n = 0;
  const server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => handler(req, res, n++));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  try {
    await fn(url, () => n);
  } finally {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
}

const json = (res: http.ServerResponse, status: number, body: unknown) => {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
};

const fast = { token: 't', backoffMs: 5, maxBackoffMs: 20 };

test('5xx and 429 answers are retried until the server succeeds', async (t) => {
  await withServer(
    (_req, res, n) =>
      n === 0
        ? json(res, 503, { code: 'Unavailable', message: 'busy' })
        : n === 1
          ? json(res, 429, {})
          : json(res, 200, { missing: ['a'] }),
    async (url, count) => {
      const client = new DiskvaultClient({ server: url, ...fast });
      t.deepEqual(await client.missing('s', ['a']), ['a']);
      t.is(count(), 3);
      client.close();
    },
  );
});

test('a 4xx answer is not retried and carries the server code and message', async (t) => {
  await withServer(
    (_req, res) => json(res, 403, { code: 'Forbidden', message: 'this token may not back up host x' }),
    async (url, count) => {
      const client = new DiskvaultClient({ server: url, ...fast });
      const err = await t.throwsAsync(client.createSession('x', 'sda'));
      t.true(err instanceof DiskvaultError);
      t.is((err as DiskvaultError).code, 'Forbidden');
      t.is(err!.message, 'this token may not back up host x');
      t.is(count(), 1);
      client.close();
    },
  );
});

test('a 409 commit answer exposes the missing ids', async (t) => {
  await withServer(
    (_req, res) =>
      json(res, 409, { code: 'Conflict', message: 'missing chunks', details: { missing: ['ab'] } }),
    async (url) => {
      const client = new DiskvaultClient({ server: url, ...fast });
      const err = (await t.throwsAsync(client.commit('s', Buffer.from('x')))) as DiskvaultError;
      t.is(err.code, 'Conflict');
      t.deepEqual(err.details?.missing, ['ab']);
      client.close();
    },
  );
});

test('against a server older than the binary missing query, the client asks in JSON from then on', async (t) => {
  const [a, b] = [randomBytes(32), randomBytes(32)];
  const seen: string[] = [];
  await withServer(
    (req, res) => {
      const type = req.headers['content-type'] ?? '';
      seen.push(type);
      // What a server before the binary form answers: it reads every missing query as JSON.
      if (type !== 'application/json')
        json(res, 400, { code: 'InvalidInput', message: 'the body must be application/json' });
      else json(res, 200, { missing: [b.toString('hex')] });
    },
    async (url) => {
      const client = new DiskvaultClient({ server: url, ...fast });
      t.deepEqual(await client.missingBinary('s', Buffer.concat([a, b])), b);
      t.deepEqual(await client.missingBinary('s', Buffer.concat([b, a])), b);
      t.deepEqual(seen, ['application/x-diskvault-ids', 'application/json', 'application/json']);
      client.close();
    },
  );
});

test('a binary missing query refused for another reason is not retried in JSON', async (t) => {
  await withServer(
    (_req, res) => json(res, 404, { code: 'NotFound', message: 'session s not found' }),
    async (url, count) => {
      const client = new DiskvaultClient({ server: url, ...fast });
      const err = (await t.throwsAsync(client.missingBinary('s', randomBytes(32)))) as DiskvaultError;
      t.is(err.code, 'NotFound');
      t.is(count(), 1);
      client.close();
    },
  );
});

test('an unreachable server is retried a bounded number of times, then reported clearly', async (t) => {
  const server = http.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  await new Promise((r) => server.close(r));
  const client = new DiskvaultClient({ server: `http://127.0.0.1:${port}`, ...fast, attempts: 3 });
  const started = Date.now();
  const err = (await t.throwsAsync(client.listSnapshots())) as DiskvaultError;
  t.is(err.code, 'Unavailable');
  t.regex(err.message, /cannot reach the server .*ECONNREFUSED/);
  t.true(Date.now() - started >= 5, 'waited between attempts');
  client.close();
});

test('getChunk decompresses zstd, checks the hash, and refuses bytes that do not match the id', async (t) => {
  const raw = randomBytes(100_000);
  const id = createHash('sha256').update(raw).digest('hex');
  const z = compress(raw);
  await withServer(
    (req, res) => {
      if (req.url?.endsWith(id)) {
        res.writeHead(200, { 'content-encoding': 'zstd', 'x-diskvault-raw-length': String(raw.length) });
        res.end(z);
      } else if (req.url?.includes('liar')) {
        res.writeHead(200, { 'content-encoding': 'zstd', 'x-diskvault-raw-length': '10' });
        res.end(z); // declares 100,000 bytes: a bomb for a 10-byte chunk
      } else {
        res.writeHead(200);
        res.end(randomBytes(10));
      }
    },
    async (url) => {
      const client = new DiskvaultClient({ server: url, ...fast });
      t.true((await client.getChunk(id)).equals(raw));
      const wrong = (await t.throwsAsync(client.getChunk('0'.repeat(64)))) as DiskvaultError;
      t.is(wrong.code, 'HashMismatch');
      const bomb = (await t.throwsAsync(client.getChunk('liar'))) as DiskvaultError;
      t.is(bomb.code, 'Corrupt');
      client.close();
    },
  );
});
