import { type ChildProcess, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { DEFAULT_CHUNKER } from '../repo-engine/config.js';
import { encodeEntry, encodeManifestHead, MANIFEST_ENTRY_BYTES } from '../repo-engine/manifest-codec.js';
import { DISKVAULT } from './lib/diskvault.js';

/**
 * What a big commit and its delete cost the server: a manifest of ENTRIES entries (default 1 million, 34
 * MiB) committed to a real `diskvault server`, then the snapshot deleted, each with the server's resident
 * memory before and at peak, and the latency of /v1/health polled every 10 ms while it runs (the event loop
 * must stay responsive). The chunk rows are put into the index directly: the bench is about the commit and
 * the delete, not the uploads.
 * Run: node dist/bench/commit-latency.js [entries=1000000]
 */
const ENTRIES = Number(process.argv[2] ?? 1_000_000);
const CHUNK_BYTES = 1024;

function startServer(dataDir: string): Promise<{ child: ChildProcess; url: string }> {
  const child = spawn(DISKVAULT, ['server', '--listen', '127.0.0.1:0', '--data', dataDir], {
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  let out = '';
  return new Promise((resolve, reject) => {
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /listening on (http:\/\/\S+)/.exec(out);
      if (m) resolve({ child, url: m[1] as string });
    });
    child.once('exit', (code) => reject(new Error(`server exited with ${code}: ${out}`)));
  });
}

function stop(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  });
}

async function procStatus(pid: number, key: 'VmRSS' | 'VmHWM'): Promise<number> {
  const m = new RegExp(`${key}:\\s+(\\d+) kB`).exec(await readFile(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? 0) * 1024;
}

/**
 * Runs `work` against the server while /v1/health is polled every 10 ms: its seconds, the server's resident
 * memory before and at peak, and the health latencies.
 */
async function whileWatching(url: string, pid: number, work: () => Promise<void>) {
  const rssBefore = await procStatus(pid, 'VmRSS');
  await writeFile(`/proc/${pid}/clear_refs`, '5'); // resets VmHWM to the current RSS
  let running = true;
  const latencies: number[] = [];
  let healthErrors = 0;
  const poll = (async () => {
    while (running) {
      const t0 = performance.now();
      try {
        await (await fetch(`${url}/v1/health`)).arrayBuffer();
      } catch {
        healthErrors++;
      }
      latencies.push(performance.now() - t0);
      await new Promise((r) => setTimeout(r, 10));
    }
  })();
  const t0 = performance.now();
  try {
    await work();
  } finally {
    running = false;
    await poll;
  }
  const seconds = (performance.now() - t0) / 1000;
  const peak = await procStatus(pid, 'VmHWM');
  latencies.sort((a, b) => a - b);
  const at = (q: number) => Number((latencies[Math.floor((latencies.length - 1) * q)] ?? 0).toFixed(1));
  const mib = (b: number) => Math.round(b / 1048576);
  return {
    seconds: Number(seconds.toFixed(2)),
    rssBeforeMiB: mib(rssBefore),
    rssPeakMiB: mib(peak),
    healthSamples: latencies.length,
    healthErrors,
    healthMedianMs: at(0.5),
    healthP99Ms: at(0.99),
    healthMaxMs: at(1),
  };
}

async function main(): Promise<void> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'dv-bench-commit-'));
  try {
    let server = await startServer(dir);
    await stop(server.child);
    const ids: Buffer[] = [];
    const db = new Database(path.join(dir, 'index.sqlite'));
    db.pragma('journal_mode = WAL');
    const chunk = db.prepare(
      'INSERT INTO chunks (id, refcount, raw_size, stored_size, touched_at) VALUES (?, 0, ?, 600, ?)',
    );
    const owner = db.prepare("INSERT INTO owners (chunk, tenant) VALUES (?, 'default')");
    const now = Date.now();
    db.transaction(() => {
      for (let i = 0; i < ENTRIES; i++) {
        const id = randomBytes(32);
        ids.push(id);
        chunk.run(id, CHUNK_BYTES, now);
        owner.run(id);
      }
    })();
    db.pragma('wal_checkpoint(TRUNCATE)');
    db.close();

    server = await startServer(dir);
    const pid = server.child.pid as number;
    const auth = {
      authorization: `Bearer ${(await readFile(path.join(dir, 'admin.token'), 'utf8')).trim()}`,
    };
    const head = encodeManifestHead({
      formatVersion: 1,
      host: 'bench',
      disk: 'sda',
      time: new Date().toISOString(),
      size: ENTRIES * CHUNK_BYTES,
      sha256: '0'.repeat(64),
      chunker: DEFAULT_CHUNKER,
      tags: [],
      unreadable: [],
      sourceFormat: 'raw',
      chunkCount: ENTRIES,
    });
    const entries = Buffer.alloc(ENTRIES * MANIFEST_ENTRY_BYTES);
    for (const [i, id] of ids.entries()) encodeEntry(id, CHUNK_BYTES, entries, i * MANIFEST_ENTRY_BYTES);
    ids.length = 0;
    const manifest = Buffer.concat([
      head,
      entries,
      createHash('sha256').update(head).update(entries).digest(),
    ]);
    const opened = await fetch(`${server.url}/v1/sessions`, {
      method: 'POST',
      headers: { ...auth, 'content-type': 'application/json' },
      body: JSON.stringify({ host: 'bench', disk: 'sda' }),
    });
    const session = ((await opened.json()) as { id: string }).id;
    await new Promise((r) => setTimeout(r, 500));
    let commitStatus = 0;
    let answer = '';
    let snapshot = '';
    const commit = await whileWatching(server.url, pid, async () => {
      const res = await fetch(`${server.url}/v1/sessions/${session}/commit`, {
        method: 'POST',
        headers: { ...auth, 'content-type': 'application/x-diskvault-manifest' },
        body: manifest,
      });
      commitStatus = res.status;
      answer = await res.text();
      if (res.status === 201) snapshot = (JSON.parse(answer) as { snapshot: { id: string } }).snapshot.id;
    });
    let deleteStatus = 0;
    const removal = snapshot
      ? await whileWatching(server.url, pid, async () => {
          const res = await fetch(`${server.url}/v1/snapshots/${snapshot}`, {
            method: 'DELETE',
            headers: auth,
          });
          deleteStatus = res.status;
          await res.arrayBuffer();
        })
      : undefined;
    await stop(server.child);
    process.stdout.write(
      `${JSON.stringify({
        entries: ENTRIES,
        manifestMiB: Number((manifest.length / 1048576).toFixed(1)),
        status: commitStatus,
        ...commit,
        ...(commitStatus !== 201 ? { answer: answer.slice(0, 300) } : {}),
        delete: removal && { status: deleteStatus, ...removal },
      })}\n`,
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  process.stderr.write(`${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
