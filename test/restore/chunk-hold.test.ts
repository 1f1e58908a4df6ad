import test from 'ava';
import { holdChunks } from '../../agent/chunk-hold.js';
import { DiskvaultClient } from '../../agent/client.js';
import { startTestServer } from '../helpers/server.js';

/**
 * The hold a restore or an NBD export takes on the repository is an upload session kept alive: it must
 * outlive its lease while held, and be gone once released. (That an open session keeps gc off forgotten
 * chunks is tested with the real export in test/nbd/nbd-e2e.test.ts.)
 */
test('a hold is renewed past its lease while held and ends when released; a refused hold only warns', async (t) => {
  const server = await startTestServer({ sessionLeaseMs: 3000 });
  t.teardown(() => server.stop());
  const client = new DiskvaultClient({ server: server.url, token: await server.makeToken('agent', ['h1']) });
  t.teardown(() => client.close());
  const warnings: string[] = [];
  const opened: string[] = [];
  const watched = {
    createSession: async (host: string, disk: string) => {
      const s = await client.createSession(host, disk);
      opened.push(s.id);
      return s;
    },
    missing: (id: string, ids: string[]) => client.missing(id, ids),
    abort: (id: string) => client.abort(id),
  };
  const hold = await holdChunks(watched, 'h1', 'sda', (m) => warnings.push(m));
  t.is(opened.length, 1);
  await new Promise((r) => setTimeout(r, 4500));
  // Past the 3 s lease: still open, because it was renewed.
  t.deepEqual(await client.missing(opened[0], []), []);
  await hold.release();
  await t.throwsAsync(client.missing(opened[0], []), { message: /session/i });
  t.deepEqual(warnings, []);

  // A token that may not open a session for this host: a warning, and a release that does nothing.
  const refused = await holdChunks(watched, 'other-host', 'sda', (m) => warnings.push(m));
  await refused.release();
  t.is(warnings.length, 1);
  t.regex(
    warnings[0],
    /could not keep gc from collecting this snapshot's chunks while it is read: .*other-host/,
  );
});
