import test from 'ava';
import { CHUNK_FETCH_PROTOCOL, CHUNK_STREAM_PROTOCOL } from '../../common/chunk-stream.js';
import { openSession } from '../helpers/api-client.js';
import { httpHead, rawExchange } from '../helpers/reliability-raw-http.js';
import { startTestServer } from '../helpers/server.js';

/**
 * The upgrade routes (the upload stream and the fetch stream) read their path themselves, outside restify:
 * a path they cannot read is the client's mistake, answered 400 InvalidInput as the PUT route would, never a
 * 500 (which an agent retries, and which logs an error).
 */
test('an upload stream asked for under a malformed or encoded session id answers 400 InvalidInput, not 500', async (t) => {
  const srv = await startTestServer();
  t.teardown(() => srv.stop());
  const agent = await srv.makeToken('agent', ['up-web1']);
  const sid = await openSession(srv.url, agent, 'up-web1');
  // An upgraded stream stays open: its answer is all there is to read after a moment.
  const upgrade = (path: string, protocol = CHUNK_STREAM_PROTOCOL, waitMs = 5_000) =>
    rawExchange({
      url: srv.url,
      head: httpHead('GET', path, {
        authorization: `Bearer ${agent}`,
        upgrade: protocol,
        connection: 'Upgrade',
      }),
      waitMs,
    });
  const encodedSid = [...sid].map((c) => `%${c.charCodeAt(0).toString(16)}`).join('');
  for (const id of ['%zz', '%', `${sid.slice(0, -2)}%zz`, encodedSid]) {
    const r = await upgrade(`/v1/sessions/${id}/chunk-stream`);
    t.is(r.status, 400, `${id}: ${r.body}`);
    t.is(JSON.parse(r.body).code, 'InvalidInput', id);
  }
  // The fetch stream's path carries nothing to decode: a malformed query is not read, and it upgrades.
  const fetchStream = await upgrade('/v1/chunk-fetch-stream?%zz', CHUNK_FETCH_PROTOCOL, 500);
  t.is(fetchStream.status, 101);
  // The session's own stream still opens.
  t.is((await upgrade(`/v1/sessions/${sid}/chunk-stream`, CHUNK_STREAM_PROTOCOL, 500)).status, 101);
  t.deepEqual(
    srv.logs.filter((l) => l.includes('"level":"error"')),
    [],
  );
});
