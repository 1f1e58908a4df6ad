import path from 'node:path';
import test from 'ava';
import { createToken } from '../../api/token-store.js';
import {
  createRepository,
  peakRss,
  removeDir,
  ServerProcess,
  tempDir,
  verifyCli,
} from '../helpers/reliability-harness.js';
import { runLoad } from '../helpers/reliability-load.js';

/**
 * 32 agents over loopback against one server process for a bounded time: no request fails, the server's
 * peak memory stays bounded, and the repository verifies afterwards. Figures go to the test log
 * (`npx ava --verbose`); bench/soak.ts runs the same for longer.
 */
const AGENTS = 32;
const SECONDS = Number(process.env.DV_LOAD_SECONDS ?? 20);
/** The server holds at most a few chunks per request in memory; 32 agents must not take it past this. */
const RSS_LIMIT = 768 * 1024 * 1024;

test('32 concurrent agents for a bounded time: no errors, bounded server memory, a consistent repository', async (t) => {
  const dir = await tempDir('load');
  const dataDir = path.join(dir, 'data');
  const server = new ServerProcess(dataDir);
  try {
    await createRepository(dataDir);
    const tokens: string[] = [];
    for (let i = 0; i < AGENTS; i++)
      tokens.push((await createToken(dataDir, { role: 'agent', hosts: [`load${i}`] })).token);
    await server.start();
    const report = await runLoad({ url: server.url, tokens, seconds: SECONDS });
    const rss = await peakRss(server.pid);
    t.log(
      `${report.agents} agents, ${report.backups} backups in ${report.seconds.toFixed(1)} s (${(report.backups / report.seconds).toFixed(1)}/s), ` +
        `${report.chunksUploaded} chunks / ${(report.bytesUploaded / 2 ** 20).toFixed(1)} MiB uploaded (${(report.bytesUploaded / 2 ** 20 / report.seconds).toFixed(2)} MiB/s), ` +
        `server peak RSS ${rss === undefined ? 'n/a' : `${(rss / 2 ** 20).toFixed(0)} MiB`}`,
    );
    t.deepEqual(report.errors.slice(0, 10), [], `${report.errors.length} requests failed`);
    t.true(
      report.snapshots.every((s) => s.length > 0),
      'every agent committed at least one snapshot',
    );
    if (rss !== undefined) t.true(rss < RSS_LIMIT, `server peak RSS ${rss} bytes`);
    const v = await verifyCli({ server: server.url, token: server.adminToken }, false);
    t.true(v.report.ok, JSON.stringify(v.report).slice(0, 2000));
    t.is(v.report.snapshotsChecked, report.backups);
  } finally {
    await server.kill('SIGKILL');
    await removeDir(dir);
  }
});
