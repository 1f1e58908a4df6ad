import { createHash } from 'node:crypto';
import { call, commit, manifestFor, type TestChunk } from './api-client.js';
import { pseudoRandom } from './reliability-images.js';

/**
 * Many agents speaking the real protocol over loopback (session, missing query, uploads, commit) for a
 * bounded time. Lighter than one CLI process per agent, so 32 of them fit on a 2-core CI machine; the
 * server under load is the real one. Shared by test/reliability/load.test.ts and bench/soak.ts.
 */
export interface LoadOptions {
  url: string;
  /** One token per agent (agent i backs up host `load<i>`). */
  tokens: string[];
  seconds: number;
  /** Chunks per backup: `shared` of them are common to all agents in a round, the rest are the agent's own. */
  chunksPerBackup?: number;
  shared?: number;
  chunkBytes?: number;
  /** Uploads in flight per agent. */
  uploadConcurrency?: number;
}

export interface LoadReport {
  agents: number;
  backups: number;
  errors: string[];
  chunksUploaded: number;
  bytesUploaded: number;
  seconds: number;
  /** Snapshot ids committed, per agent. */
  snapshots: string[][];
}

function chunk(seed: string, bytes: number): TestChunk {
  const data = pseudoRandom(seed, bytes);
  return { id: createHash('sha256').update(data).digest('hex'), data };
}

export async function runLoad(opts: LoadOptions): Promise<LoadReport> {
  const perBackup = opts.chunksPerBackup ?? 24;
  const shared = opts.shared ?? 12;
  const bytes = opts.chunkBytes ?? 48 * 1024;
  const inFlight = opts.uploadConcurrency ?? 4;
  const deadline = Date.now() + opts.seconds * 1000;
  const started = Date.now();
  const report: LoadReport = {
    agents: opts.tokens.length,
    backups: 0,
    errors: [],
    chunksUploaded: 0,
    bytesUploaded: 0,
    seconds: 0,
    snapshots: [],
  };

  const agent = async (i: number, token: string) => {
    const host = `load${i}`;
    const mine: string[] = [];
    report.snapshots[i] = mine;
    for (let round = 0; Date.now() < deadline; round++) {
      const chunks = Array.from({ length: perBackup }, (_, k) =>
        k < shared ? chunk(`load-shared/${round % 5}/${k}`, bytes) : chunk(`load/${i}/${round}/${k}`, bytes),
      );
      try {
        const opened = await call(opts.url, token, 'POST', '/v1/sessions', { json: { host, disk: 'sda' } });
        if (opened.status !== 201)
          throw new Error(`open session: ${opened.status} ${opened.bytes.toString().slice(0, 200)}`);
        const session: string = opened.json.id;
        const missing = await call(opts.url, token, 'POST', `/v1/sessions/${session}/missing`, {
          json: { ids: chunks.map((c) => c.id) },
        });
        if (missing.status !== 200)
          throw new Error(`missing: ${missing.status} ${missing.bytes.toString().slice(0, 200)}`);
        const want = new Set<string>(missing.json.missing);
        const queue = chunks.filter((c) => want.delete(c.id));
        // Bounded uploads per agent, as the real agent does.
        await Promise.all(
          Array.from({ length: inFlight }, async () => {
            for (let c = queue.shift(); c; c = queue.shift()) {
              const r = await call(opts.url, token, 'PUT', `/v1/chunks/${c.id}?session=${session}`, {
                body: c.data,
                headers: { 'content-type': 'application/octet-stream' },
              });
              if (r.status !== 201 && r.status !== 200)
                throw new Error(`put: ${r.status} ${r.bytes.toString().slice(0, 200)}`);
              report.chunksUploaded++;
              report.bytesUploaded += c.data.length;
            }
          }),
        );
        const done = await commit(
          opts.url,
          token,
          session,
          manifestFor(host, 'sda', chunks, { chunker: opened.json.chunker }),
        );
        if (done.status !== 201)
          throw new Error(`commit: ${done.status} ${done.bytes.toString().slice(0, 200)}`);
        mine.push(done.json.snapshot.id);
        report.backups++;
      } catch (err) {
        const cause = (err as { cause?: { code?: string; message?: string } }).cause;
        report.errors.push(
          `agent ${i} round ${round}: ${(err as Error).message}${cause ? ` (${cause.code ?? ''} ${cause.message ?? ''})` : ''}`,
        );
      }
    }
  };
  await Promise.all(opts.tokens.map((token, i) => agent(i, token)));
  report.seconds = (Date.now() - started) / 1000;
  return report;
}
