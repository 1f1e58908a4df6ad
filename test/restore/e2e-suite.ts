import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFile, mkdtemp, open, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { TestFn } from 'ava';
import { DiskvaultClient } from '../../agent/client.js';
import { MANIFEST_ENTRY_BYTES, ManifestReader } from '../../repo-engine/manifest-codec.js';
import { corruptStoredChunk, storedChunkFile } from '../helpers/backup-e2e.js';
import { DISKVAULT } from '../helpers/diskvault-command.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { workload256M } from '../helpers/workload.js';

const execFileP = promisify(execFile);
/** ~256 KiB chunks: about a thousand per 256M night, so a run stays quick and in-place has fine grain. */
const CHUNKER = { min: 64 * 1024, avg: 256 * 1024, max: 1024 * 1024 };

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
  /** SHA-256 of everything the command wrote to stdout (for restores to '-'). */
  stdoutSha256: string;
}

export function runCli(args: string[], env: NodeJS.ProcessEnv, keepStdout = true): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(DISKVAULT, args, {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const hash = createHash('sha256');
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      hash.update(d);
      if (keepStdout) stdout += d.toString('utf8');
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) =>
      resolve({ code: code ?? -1, stdout, stderr, stdoutSha256: hash.digest('hex') }),
    );
  });
}

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  const fh = await open(path, 'r');
  try {
    for await (const piece of fh.createReadStream({ highWaterMark: 4 * 1024 * 1024 }))
      h.update(piece as Buffer);
  } finally {
    await fh.close();
  }
  return h.digest('hex');
}

function lastJson(text: string): Record<string, unknown> {
  const lines = text
    .trim()
    .split('\n')
    .filter((l) => l.startsWith('{'));
  return JSON.parse(lines[lines.length - 1]) as Record<string, unknown>;
}

interface Context {
  server: TestServer;
  env: NodeJS.ProcessEnv;
  images: string[];
  snapshots: { id: string; sha256: string; size: number }[];
  work: string;
}

/**
 * Restore end to end: the real server (local storage or fake S3), real `diskvault backup` of the four
 * nights of the ext4 workload, real `diskvault restore`. Called once per storage kind.
 */
export function restoreEndToEnd(test: TestFn, storage: 'local' | 's3'): void {
  const ctx = {} as Context;

  test.before(async () => {
    ctx.images = await workload256M();
    // No server-side chunk cache: the corruption test must read what is on disk.
    ctx.server = await startTestServer({ storage, chunker: CHUNKER, cacheBytes: 1 });
    ctx.env = {
      DISKVAULT_SERVER: ctx.server.url,
      DISKVAULT_TOKEN: await ctx.server.makeToken('agent', ['web1']),
    };
    ctx.work = await mkdtemp(join(tmpdir(), `diskvault-restore-e2e-${storage}-`));
    ctx.snapshots = [];
    for (const [n, img] of ctx.images.entries()) {
      const res = await runCli(['backup', img, '--host', 'web1', '--disk', 'sda', '--json'], ctx.env);
      if (res.code !== 0) throw new Error(`backup of night${n} failed (${res.code}): ${res.stderr}`);
      const summary = lastJson(
        res.stdout
          .split('\n')
          .filter((l) => l.includes('"summary"'))
          .join('\n'),
      );
      ctx.snapshots.push({
        id: String(summary.snapshot),
        sha256: String(summary.sha256),
        size: Number(summary.size),
      });
    }
  });

  test.after.always(async () => {
    await ctx.server?.stop();
    if (ctx.work) await rm(ctx.work, { recursive: true, force: true });
  });

  test.serial(
    `[${storage}] snapshots --json lists every night with id, host, disk, time and size`,
    async (t) => {
      const res = await runCli(['snapshots', '--host', 'web1', '--json'], ctx.env);
      t.is(res.code, 0, res.stderr);
      const list = JSON.parse(res.stdout) as {
        id: string;
        host: string;
        disk: string;
        time: string;
        size: number;
      }[];
      t.deepEqual(
        list.map((s) => s.id),
        ctx.snapshots.map((s) => s.id),
      );
      t.true(
        list.every(
          (s) =>
            s.host === 'web1' &&
            s.disk === 'sda' &&
            s.size === 256 * 1024 * 1024 &&
            /^\d{4}-\d\d-\d\dT.*Z$/.test(s.time),
        ),
      );
      const table = await runCli(['snapshots'], ctx.env);
      t.regex(table.stdout, new RegExp(ctx.snapshots[3].id.slice(0, 12)));
    },
  );

  test.serial(`[${storage}] every night restores byte for byte and passes e2fsck`, async (t) => {
    for (const [n, snap] of ctx.snapshots.entries()) {
      const out = join(ctx.work, `restored${n}.img`);
      // night3 by `latest`, the others by id prefix and full id.
      const spec = n === 3 ? 'latest' : n === 2 ? snap.id.slice(0, 12) : snap.id;
      const res = await runCli(['restore', spec, out, '--host', 'web1', '--disk', 'sda', '--json'], ctx.env);
      t.is(res.code, 0, res.stderr);
      const summary = lastJson(res.stdout);
      t.is(summary.type, 'summary');
      t.is(summary.snapshot, snap.id);
      t.is(summary.verified, true);
      t.is(summary.sha256, snap.sha256);
      // cmp: a byte-for-byte comparison in C, off this process (which also runs the server).
      await t.notThrowsAsync(execFileP('cmp', ['-s', out, ctx.images[n]]), `night${n} equals the original`);
      await t.notThrowsAsync(execFileP('e2fsck', ['-fn', out]), `night${n} passes e2fsck`);
      const st = await stat(out);
      t.is(st.size, snap.size);
      t.true(st.blocks * 512 < st.size, 'zero chunks are holes');
    }
  });

  // Storage-independent paths (stdout, a second in-place pass) run once, on local storage, to save CI time.
  if (storage === 'local') {
    test.serial(`[${storage}] restore to stdout piped into sha256 gives the image hash`, async (t) => {
      const res = await runCli(['restore', ctx.snapshots[1].id, '-', '--json'], ctx.env, false);
      t.is(res.code, 0, res.stderr);
      t.is(res.stdoutSha256, ctx.snapshots[1].sha256);
      // With the image on stdout, the summary goes to stderr.
      t.is(lastJson(res.stderr).verified, true);
    });
  }

  test.serial(
    `[${storage}] --in-place from a night2 copy to night3 downloads only the chunks that changed`,
    async (t) => {
      const disk = join(ctx.work, 'inplace.img');
      await copyFile(ctx.images[2], disk);
      const expected = await changedChunks(ctx, ctx.snapshots[3].id, ctx.images[2]);
      const res = await runCli(['restore', ctx.snapshots[3].id, disk, '--in-place', '--json'], ctx.env);
      t.is(res.code, 0, res.stderr);
      const summary = lastJson(res.stdout);
      t.is(summary.verified, true);
      t.is(await sha256File(disk), ctx.snapshots[3].sha256);
      // Every differing chunk is written; zero chunks among them need no download.
      t.true(
        Number(summary.chunksFetched) <= expected.count,
        `${String(summary.chunksFetched)} fetched, ${expected.count} differ`,
      );
      t.true(
        Number(summary.chunksFetched) >= expected.count - expected.zero,
        `${String(summary.chunksFetched)} fetched, ${expected.count} differ`,
      );
      t.is(Number(summary.bytesReused), ctx.snapshots[3].size - expected.bytes);
      // A guard on the workload, not on restore: the test means something only if most of the disk is reused.
      // The generated night3 rewrites about 7 % of night2 (logs rotated, packages upgraded, files added and
      // deleted, database pages rewritten in place).
      t.true(expected.bytes < ctx.snapshots[3].size * 0.5, `night3 changed ${expected.bytes} bytes`);

      if (storage !== 'local') return;
      // Run again: nothing left to fetch.
      const again = await runCli(['restore', ctx.snapshots[3].id, disk, '--in-place', '--json'], ctx.env);
      t.is(again.code, 0, again.stderr);
      t.is(lastJson(again.stdout).chunksFetched, 0);
      t.is(lastJson(again.stdout).bytesReused, ctx.snapshots[3].size);
    },
  );

  if (storage === 'local') {
    test.serial(
      '[local] a chunk corrupted in storage makes restore fail loudly and name the chunk',
      async (t) => {
        const snap = ctx.snapshots[0];
        const victim = await pickDataChunk(ctx, snap.id);
        await corruptStoredChunk(ctx.server.dataDir, victim);
        const out = join(ctx.work, 'corrupt.img');
        const res = await runCli(['restore', snap.id, out, '--json'], ctx.env);
        t.is(res.code, 1);
        t.regex(res.stderr, new RegExp(`chunk ${victim}`));
        t.notRegex(res.stdout, /"type":"summary"/);
        t.notRegex(res.stderr, /\n\s+at /, 'no stack trace');
        // --continue-on-error is covered by the unit tests: each run here waits out the client's retries.
      },
    );
  }
}

/** Counts night3's chunks whose bytes differ at their offset in the night2 image: what in-place must write. */
async function changedChunks(
  ctx: Context,
  snapshot: string,
  oldImage: string,
): Promise<{ count: number; zero: number; bytes: number }> {
  const client = new DiskvaultClient({
    server: String(ctx.env.DISKVAULT_SERVER),
    token: String(ctx.env.DISKVAULT_TOKEN),
  });
  const fh = await open(oldImage, 'r');
  try {
    const reader = await ManifestReader.open(await client.getManifest(snapshot), 'wire');
    let offset = 0;
    let count = 0;
    let zero = 0;
    let bytes = 0;
    for await (const batch of reader.entryBatches()) {
      for (let at = 0; at < batch.length; at += MANIFEST_ENTRY_BYTES) {
        const id = batch.toString('hex', at, at + 32);
        const len = batch.readUInt32BE(at + 32);
        const old = Buffer.alloc(len);
        await fh.read(old, 0, len, offset);
        if (createHash('sha256').update(old).digest('hex') !== id) {
          count++;
          bytes += len;
          if (createHash('sha256').update(Buffer.alloc(len)).digest('hex') === id) zero++;
        }
        offset += len;
      }
    }
    return { count, zero, bytes };
  } finally {
    await fh.close();
    client.close();
  }
}

/** A chunk in the middle of the snapshot that holds data (not zeros) and that the local store has on disk. */
async function pickDataChunk(ctx: Context, snapshot: string): Promise<string> {
  const client = new DiskvaultClient({
    server: String(ctx.env.DISKVAULT_SERVER),
    token: String(ctx.env.DISKVAULT_TOKEN),
  });
  try {
    const reader = await ManifestReader.open(await client.getManifest(snapshot), 'wire');
    const ids: string[] = [];
    for await (const e of reader.entries()) {
      if (createHash('sha256').update(Buffer.alloc(e.length)).digest('hex') !== e.id) ids.push(e.id);
    }
    const id = ids[Math.floor(ids.length / 2)];
    await stat(await storedChunkFile(ctx.server.dataDir, id));
    return id;
  } finally {
    client.close();
  }
}
