import test from 'ava';
import { backup, call, chunkOf } from '../helpers/api-client.js';
import { pollUntil } from '../helpers/poll.js';
import { startTestServer } from '../helpers/server.js';

/** A job as GET /v1/jobs/:id answers it, with a verify's report. */
interface VerifyJob {
  id: string;
  state: string;
  result?: { ok: boolean; bytesRead: number };
}

test('a verify that reads every chunk never joins a plain verify running, nor the other way round', async (t) => {
  const srv = await startTestServer({ storage: 'local', faults: true });
  t.teardown(() => srv.stop());
  for (let i = 0; i < 3; i++)
    await backup(srv.url, srv.adminToken, 'web1', 'sda', [chunkOf(`verify job ${i}`, 20_000)]);
  // Every storage read answers late, so the plain verify (which reads each manifest) is still running when
  // the second request arrives.
  srv.faults!.setFaults({ delayReadsMs: 300 });
  const admin2 = await srv.makeToken('admin');
  const plain = await call(srv.url, srv.adminToken, 'POST', '/v1/verify', { json: { readData: false } });
  const reading = await call(srv.url, admin2, 'POST', '/v1/verify', { json: { readData: true } });
  t.is(plain.json.job.state, 'running');
  t.not(reading.json.job.id, plain.json.job.id, 'the read-data request got a job of its own');
  const done = (id: string, token: string) =>
    pollUntil(
      async () => (await call(srv.url, token, 'GET', `/v1/jobs/${id}`)).json.job as VerifyJob,
      (job) => job.state !== 'running',
      `verify job ${id} to end`,
      { timeoutMs: 60_000 },
    );
  const [a, b] = await Promise.all([
    done(plain.json.job.id, srv.adminToken),
    done(reading.json.job.id, admin2),
  ]);
  t.like(a, { state: 'done', result: { ok: true, bytesRead: 0 } });
  t.is(b.state, 'done');
  t.true(b.result!.ok);
  t.true(b.result!.bytesRead > 0, 'the read-data verify read the chunks');
  // Two plain verifies at once still share one job.
  const again = await call(srv.url, srv.adminToken, 'POST', '/v1/verify', { json: { readData: false } });
  const same = await call(srv.url, admin2, 'POST', '/v1/verify', { json: { readData: false } });
  t.is(same.json.job.id, again.json.job.id);
  await done(again.json.job.id, srv.adminToken);
});
