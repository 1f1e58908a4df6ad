import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { PassThrough } from 'node:stream';
import test from 'ava';
import { DiskvaultClient } from '../../agent/client.js';
import { readBounded } from '../../agent/http/body-read.js';
import { parseRetryAfter, RetryPolicy } from '../../agent/http/retry-policy.js';
import type { Response } from '../../agent/http/transport.js';
import { DiskvaultError } from '../../common/errors.js';
import { pollUntil } from '../helpers/poll.js';

/** The client's parts on their own: the retry policy, bounded body reads, Retry-After and cancelling. */
type Handler = (req: http.IncomingMessage, res: http.ServerResponse, n: number) => void;

async function withServer(handler: Handler, fn: (url: string, count: () => number) => Promise<void>) {
  let n = 0;
  const server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => handler(req, res, n++));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  try {
    await fn(`http://127.0.0.1:${(server.address() as AddressInfo).port}`, () => n);
  } finally {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
}

const busy = (res: http.ServerResponse, status: number, retryAfter?: string) => {
  res.writeHead(status, {
    'content-type': 'application/json',
    ...(retryAfter !== undefined ? { 'retry-after': retryAfter } : {}),
  });
  res.end(JSON.stringify({ code: status === 429 ? 'TooManyRequests' : 'Unavailable', message: 'busy' }));
};
const ok = (res: http.ServerResponse) => {
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ missing: ['a'] }));
};

test('Retry-After reads as delta-seconds or an HTTP date; anything else is ignored', (t) => {
  const now = Date.parse('2026-01-01T00:00:00Z');
  t.is(parseRetryAfter('7', now), 7000);
  t.is(parseRetryAfter(' 0 ', now), 0);
  t.is(parseRetryAfter('Thu, 01 Jan 2026 00:00:30 GMT', now), 30_000);
  t.is(parseRetryAfter('Wed, 31 Dec 2025 23:59:00 GMT', now), 0);
  t.is(parseRetryAfter('soon', now), undefined);
  t.is(parseRetryAfter(undefined, now), undefined);
  t.is(parseRetryAfter(['3', '9'], now), 3000);
});

test('the policy waits what the server asks on 429 and 503, backs off otherwise, and gives up on a long ask', (t) => {
  const policy = new RetryPolicy({ backoffMs: 100, maxBackoffMs: 400, maxRetryAfterMs: 10_000 });
  t.is(policy.waitAfter(1, 429, { 'retry-after': '3' }), 3000);
  t.is(policy.waitAfter(1, 503, { 'retry-after': '2' }), 2000);
  t.is(policy.waitAfter(1, 503, { 'retry-after': '11' }), null);
  // Never sooner than the backoff, whatever the server says.
  const soon = policy.waitAfter(3, 429, { 'retry-after': '0' })!;
  t.true(soon >= 200 && soon < 400, `${soon}`);
  // A 502 carries no Retry-After meaning: plain backoff, first attempt in [50, 100).
  const plain = policy.waitAfter(1, 502, { 'retry-after': '3' })!;
  t.true(plain >= 50 && plain < 100, `${plain}`);
  t.true(policy.isRetryableStatus(429));
  t.true(policy.isRetryableStatus(503));
  t.false(policy.isRetryableStatus(501));
  t.false(policy.isRetryableStatus(507));
  t.false(policy.isRetryableStatus(404));
});

test('the client honours Retry-After before asking again', async (t) => {
  await withServer(
    (_req, res, n) => (n === 0 ? busy(res, 503, '1') : ok(res)),
    async (url, count) => {
      const client = new DiskvaultClient({ server: url, token: 't', backoffMs: 5, maxBackoffMs: 20 });
      const started = Date.now();
      t.deepEqual(await client.missing('s', ['a']), ['a']);
      t.true(Date.now() - started >= 1000, 'waited the second the server asked for');
      t.is(count(), 2);
      client.close();
    },
  );
});

test('a Retry-After longer than the client waits is reported at once with the server message', async (t) => {
  await withServer(
    (_req, res) => busy(res, 429, '900'),
    async (url, count) => {
      const client = new DiskvaultClient({ server: url, token: 't', backoffMs: 5, maxBackoffMs: 20 });
      const err = (await t.throwsAsync(client.createSession('h', 'd'))) as DiskvaultError;
      t.is(err.code, 'TooManyRequests');
      t.is(err.message, 'busy');
      t.is(count(), 1);
      client.close();
    },
  );
});

test('the client signal cancels a back-off at once, and clean-up requests still go out', async (t) => {
  await withServer(
    (req, res) => {
      if (req.method === 'DELETE') res.writeHead(204).end();
      else busy(res, 503, '30');
    },
    async (url, count) => {
      const ctl = new AbortController();
      const client = new DiskvaultClient({ server: url, token: 't', signal: ctl.signal });
      const started = Date.now();
      const pending = client.missing('s', ['a']);
      // Answered, so now in the 30 s back-off.
      await pollUntil(count, (n) => n === 1, 'the first answer');
      ctl.abort(new Error('interrupted'));
      const err = await t.throwsAsync(pending);
      t.is(err!.message, 'interrupted');
      t.true(Date.now() - started < 5000, 'did not sit out the 30 s asked');
      t.is(count(), 1);
      await client.abort('s');
      t.is(count(), 2);
      client.close();
    },
  );
});

test('an aborted signal cancels a request in flight', async (t) => {
  await withServer(
    () => {
      // Never answers: only the signal can end the wait.
    },
    async (url) => {
      const ctl = new AbortController();
      const client = new DiskvaultClient({ server: url, token: 't', signal: ctl.signal });
      const pending = client.listSnapshots();
      setTimeout(() => ctl.abort(new Error('interrupted')), 100);
      const err = await t.throwsAsync(pending);
      t.is(err!.message, 'interrupted');
      client.close();
    },
  );
});

function response(body: Buffer[], headers: http.IncomingHttpHeaders): Response {
  const stream = new PassThrough();
  for (const b of body) stream.write(b);
  stream.end();
  return { status: 200, headers, stream };
}

test('bounded reads take exactly the announced length, and refuse more than the cap or the announcement', async (t) => {
  const two = [Buffer.alloc(3, 1), Buffer.alloc(4, 2)];
  t.deepEqual(await readBounded(response(two, { 'content-length': '7' }), 7, 'x'), Buffer.concat(two));
  t.deepEqual(await readBounded(response(two, {}), 7, 'x'), Buffer.concat(two));
  const capped = (await t.throwsAsync(readBounded(response(two, {}), 6, 'x'))) as DiskvaultError;
  t.is(capped.code, 'Corrupt');
  t.is(capped.message, 'x: the server sent 7 bytes or more, at most 6 expected');
  const announced = (await t.throwsAsync(
    readBounded(response(two, { 'content-length': '8' }), 7, 'x'),
  )) as DiskvaultError;
  t.is(announced.message, 'x: the server sent 8 bytes or more, at most 7 expected');
  const more = (await t.throwsAsync(
    readBounded(response(two, { 'content-length': '5' }), 7, 'x'),
  )) as DiskvaultError;
  t.is(more.message, 'x: the server sent more than its announced 5 bytes');
  const short = (await t.throwsAsync(
    readBounded(response(two, { 'content-length': '9' }), 9, 'x'),
  )) as DiskvaultError;
  t.is(short.code, 'Unavailable');
  t.is(short.message, 'x: the connection ended after 7 of 9 bytes');
  t.true(short instanceof DiskvaultError);
});
