import { createHash, randomBytes } from 'node:crypto';
import { closeSync, openSync, readSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import test from 'ava';
import { runBackup } from '../../agent/backup/backup.js';
import { DiskvaultClient } from '../../agent/client.js';
import type { ImageSource } from '../../agent/source.js';
import type { SnapshotInfo } from '../../api/protocol.js';
import { countStoredChunks, readSnapshot, runCli } from '../helpers/backup-e2e.js';
import { FailingSource } from '../helpers/failing-source.js';
import { pollUntilSteady } from '../helpers/poll.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { workload256M } from '../helpers/workload.js';

/** The backup library and CLI against a real in-process server with small chunks (16/64/256 KiB). */
const MiB = 1024 * 1024;

function sha(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

/** Random data with zero runs and repeats, so zero chunks and in-image duplicates occur. */
function diskLike(size: number): Buffer {
  const out = Buffer.alloc(size);
  const block = randomBytes(300 * 1024);
  for (let at = 0, k = 0; at < size; k++) {
    const len = Math.min(size - at, 512 * 1024 + ((k * 104729) % (1024 * 1024)));
    if (k % 4 === 1) randomBytes(len).copy(out, at);
    else if (k % 4 === 3) block.copy(out, at, 0, Math.min(len, block.length));
    at += len;
  }
  return out;
}

async function withServer<T>(fn: (s: TestServer, token: string) => Promise<T>, opts = {}): Promise<T> {
  const server = await startTestServer({ storage: 'local', ...opts });
  try {
    return await fn(server, await server.makeToken('agent', ['host1']));
  } finally {
    await server.stop();
  }
}

test('unreadable sectors become zeros, are recorded in the snapshot and reported, and the backup completes', async (t) => {
  await withServer(async (server, token) => {
    const data = diskLike(6 * MiB + 1000);
    const bad: [number, number][] = [
      [3 * MiB + 512 * 3, 512 * 2],
      [5 * MiB, 512],
    ];
    const client = new DiskvaultClient({ server: server.url, token });
    try {
      const summary = await runBackup({
        client,
        source: new FailingSource(data, { bad }),
        host: 'host1',
        disk: 'sdb',
        windowBytes: 1 * MiB,
      });
      const expected = Buffer.from(data);
      for (const [o, l] of bad) expected.fill(0, o, o + l);
      t.deepEqual(summary.unreadable, bad);
      t.is(summary.sha256, sha(expected));
      t.is(summary.size, data.length);
      const stored = await readSnapshot(client, summary.snapshot.id);
      t.deepEqual(stored.header.unreadable, bad);
      t.deepEqual(summary.snapshot.unreadable, bad);
    } finally {
      client.close();
    }
  });
});

test('a source unreadable past the limit stops the backup and commits nothing', async (t) => {
  await withServer(async (server, token) => {
    const data = diskLike(6 * MiB);
    const client = new DiskvaultClient({ server: server.url, token });
    try {
      // From 2 MiB on the source fails everywhere: an LVM snapshot that ran out of space, a disk that left.
      const source = new FailingSource(data, { bad: [[2 * MiB, 4 * MiB]] });
      const err = await t.throwsAsync(
        runBackup({
          client,
          source,
          host: 'host1',
          disk: 'sdb',
          windowBytes: 1 * MiB,
          maxUnreadable: { bytes: Math.floor(data.length / 100), asGiven: '1%' },
        }),
      );
      t.regex(
        err!.message,
        /^more than 1% of the image could not be read \(\d+ bytes so far, the first at byte 2097152\)/,
      );
      t.deepEqual(server.repo.listSnapshots(), [], 'nothing was committed');
      t.true(source.reads < 3000, `gave up after ${source.reads} reads`);
    } finally {
      client.close();
    }
  });
});

test('an image that shrinks while it is read fails the backup and commits nothing', async (t) => {
  await withServer(async (server, token) => {
    const data = diskLike(4 * MiB);
    // A file that had 6 MiB when it was opened, truncated to 4 MiB while the backup read it.
    const source: ImageSource = {
      size: 6 * MiB,
      sectorSize: 512,
      format: 'raw',
      seekable: true,
      async read(buf, offset) {
        return offset >= data.length
          ? 0
          : data.copy(buf, 0, offset, Math.min(data.length, offset + buf.length));
      },
      async close() {},
    };
    const client = new DiskvaultClient({ server: server.url, token });
    try {
      const err = await t.throwsAsync(
        runBackup({ client, source, host: 'host1', disk: 'sdb', windowBytes: 1 * MiB }),
      );
      t.is(
        err!.message,
        `the image shrank while it was read: it ended at byte ${4 * MiB} of the ${6 * MiB} it had when the backup began; nothing was committed`,
      );
      t.deepEqual(server.repo.listSnapshots(), [], 'nothing was committed');
    } finally {
      client.close();
    }
  });
});

test('chunks the agent wrongly believes stored are named by the commit, read again and uploaded', async (t) => {
  await withServer(
    async (server, token) => {
      const data = diskLike(8 * MiB);
      const base = new DiskvaultClient({ server: server.url, token });
      const first = await runBackup({
        client: base,
        source: new FailingSource(data),
        host: 'host1',
        disk: 'sda',
        windowBytes: MiB,
      });
      const manifest = Buffer.concat(await (await base.getManifest(first.snapshot.id)).toArray());
      base.close();
      // The snapshot is forgotten and its chunks collected, yet the agent is told it is the previous one:
      // its known-set is stale, and only the server's commit check can tell.
      const unique = server.repo.stats().uniqueChunks;
      await server.repo.deleteSnapshot(first.snapshot.id);
      t.is((await server.repo.gc()).chunksDeleted, unique);
      let commits = 0;
      class StaleClient extends DiskvaultClient {
        override async createSession(host: string, disk: string) {
          return { ...(await super.createSession(host, disk)), previous: first.snapshot };
        }
        override async getManifest(): Promise<Readable> {
          return Readable.from([manifest]);
        }
        override async commit(
          sessionId: string,
          body: Parameters<DiskvaultClient['commit']>[1],
        ): Promise<SnapshotInfo> {
          commits++;
          return await super.commit(sessionId, body);
        }
      }
      const changed = Buffer.from(data);
      randomBytes(100_000).copy(changed, 3 * MiB);
      const client = new StaleClient({ server: server.url, token });
      try {
        const second = await runBackup({
          client,
          source: new FailingSource(changed),
          host: 'host1',
          disk: 'sda',
          windowBytes: MiB,
        });
        t.is(commits, 2);
        t.is(second.sha256, sha(changed));
        // every chunk of the new snapshot is really there again (read with a client that is not stale)
        const reader = new DiskvaultClient({ server: server.url, token });
        const { entries } = await readSnapshot(reader, second.snapshot.id);
        reader.close();
        let at = 0;
        for (const e of entries) {
          const got = await client.getChunk(e.id);
          if (!got.equals(changed.subarray(at, at + e.length)))
            t.fail(
              `chunk ${e.id} at ${at}: got ${got.length} bytes (${sha(got)}), want ${e.length} (${sha(changed.subarray(at, at + e.length))})`,
            );
          at += e.length;
        }
        t.is(at, changed.length);
      } finally {
        client.close();
      }
    },
    { gcGraceMs: 0 },
  );
});

test('an image piped on stdin gives the same snapshot as the file, and sends nothing new', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'dv-backup-stdin-'));
  try {
    const data = diskLike(5 * MiB + 7);
    const file = join(dir, 'disk.img');
    await writeFile(file, data);
    await withServer(async (server, token) => {
      const env = { DISKVAULT_SERVER: server.url, DISKVAULT_TOKEN: token };
      const fromFile = await runCli(['backup', file, '--host', 'host1', '--disk', 'a', '--json'], env);
      t.is(fromFile.code, 0, fromFile.stderr);
      const fromPipe = await runCli(['backup', '-', '--host', 'host1', '--disk', 'b', '--json'], env, {
        stdinFile: file,
      });
      t.is(fromPipe.code, 0, fromPipe.stderr);
      t.is(fromPipe.summary!.sha256, sha(data));
      t.is(fromPipe.summary!.sha256, fromFile.summary!.sha256);
      t.is(fromPipe.summary!.chunks, fromFile.summary!.chunks);
      t.is(fromPipe.summary!.newChunks, 0);
      t.is(fromPipe.summary!.bytesUploaded, 0);
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('an image redirected to stdin from a file (< disk.img) gives the same snapshot as the file, from where the descriptor stands', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'dv-backup-stdin-file-'));
  try {
    const head = randomBytes(4096);
    const data = diskLike(5 * MiB + 7);
    const file = join(dir, 'disk.img');
    await writeFile(file, Buffer.concat([head, data]));
    await writeFile(join(dir, 'image.img'), data);
    await withServer(async (server, token) => {
      const env = { DISKVAULT_SERVER: server.url, DISKVAULT_TOKEN: token };
      const fromFile = await runCli(
        ['backup', join(dir, 'image.img'), '--host', 'host1', '--disk', 'a', '--json'],
        env,
      );
      t.is(fromFile.code, 0, fromFile.stderr);
      // A descriptor already past a header, as after `(head -c 4096 >/dev/null; diskvault backup -) < disk.img`.
      const fd = openSync(file, 'r');
      try {
        readSync(fd, Buffer.alloc(head.length), 0, head.length, null);
        const redirected = await runCli(['backup', '-', '--host', 'host1', '--disk', 'b', '--json'], env, {
          stdinFd: fd,
        });
        t.is(redirected.code, 0, redirected.stderr);
        t.is(redirected.summary!.sha256, sha(data));
        t.is(redirected.summary!.size, data.length);
        t.is(redirected.summary!.chunks, fromFile.summary!.chunks);
        t.is(redirected.summary!.newChunks, 0);
        t.is(redirected.summary!.sourceFormat, 'raw');
      } finally {
        closeSync(fd);
      }
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a killed backup, run again, uploads only the chunks the server still lacks', async (t) => {
  const [night0] = await workload256M();
  await withServer(
    async (server, token) => {
      const env = { DISKVAULT_SERVER: server.url, DISKVAULT_TOKEN: token };
      const args = ['backup', night0, '--host', 'host1', '--disk', 'sda', '--json', '--concurrency', '2'];
      const killed = await runCli(args, env, {
        onStderr: (text, kill) => {
          const uploaded = [...text.matchAll(/"bytesUploaded":(\d+)/g)].map((m) => Number(m[1]));
          if (uploaded.some((n) => n > 0)) kill();
        },
      });
      t.is(killed.code, null, 'the first run was killed before it finished');
      // The server may still be storing uploads whose bodies arrived before the kill: wait until it settles.
      const storedBefore = await pollUntilSteady(() => countStoredChunks(server.dataDir), 'stored chunks', {
        quietMs: 300,
      });
      t.true(storedBefore > 0);
      const rerun = await runCli(args, env);
      t.is(rerun.code, 0, rerun.stderr);
      const storedAfter = await countStoredChunks(server.dataDir);
      t.is(rerun.summary!.newChunks, storedAfter - storedBefore);
      t.true(rerun.summary!.newChunks < storedAfter);
    },
    { chunker: { min: 64 * 1024, avg: 256 * 1024, max: 1024 * 1024 } },
  );
});

test('an image smaller than one chunk, and an empty one, are backed up', async (t) => {
  await withServer(async (server, token) => {
    const client = new DiskvaultClient({ server: server.url, token });
    try {
      for (const size of [1000, 0]) {
        const data = randomBytes(size);
        const s = await runBackup({
          client,
          source: new FailingSource(data),
          host: 'host1',
          disk: `small${size}`,
        });
        t.is(s.size, size);
        t.is(s.sha256, sha(data));
        t.is(s.chunks, size === 0 ? 0 : 1);
      }
    } finally {
      client.close();
    }
  });
});

test('the CLI refuses bad names and missing flags with exit code 2 before contacting the server', async (t) => {
  const env = { DISKVAULT_SERVER: 'http://127.0.0.1:9', DISKVAULT_TOKEN: 'x' };
  const r1 = await runCli(['backup', '/dev/null', '--host', '../etc', '--disk', 'sda'], env);
  t.is(r1.code, 2);
  t.regex(r1.stderr, /--host/);
  const r2 = await runCli(['backup', '/dev/null', '--disk', 'sda'], env);
  t.is(r2.code, 2);
  const r3 = await runCli(['backup', '/nonexistent/disk.img', '--host', 'h', '--disk', 'sda'], env);
  t.is(r3.code, 1);
  t.regex(r3.stderr, /does not exist|ENOENT/);
  t.notRegex(r3.stderr, /at .*\.js:\d+/); // no stack trace
  for (const [limit, message] of [
    ['lots', /--max-unreadable 'lots': expected a share of the image \(1%\) or a size/],
    ['150%', /--max-unreadable 150%: a share is at most 100%/],
  ] as const) {
    const r = await runCli(
      ['backup', '/dev/null', '--host', 'h', '--disk', 'sda', '--max-unreadable', limit],
      env,
    );
    t.is(r.code, 2);
    t.regex(r.stderr, message);
  }
});
