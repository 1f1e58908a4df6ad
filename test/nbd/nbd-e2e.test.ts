import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import { DiskvaultClient } from '../../agent/client.js';
import { runJob } from '../helpers/api-client.js';
import { backupNights, corruptStoredChunk, readSnapshot, runCli } from '../helpers/backup-e2e.js';
import { DISKVAULT } from '../helpers/diskvault-command.js';
import { downloadsLoggedSince } from '../helpers/download-logs.js';
import { pollUntil } from '../helpers/poll.js';
import { startTestServer, type TestServer } from '../helpers/server.js';

/**
 * `diskvault nbd` end to end: the real server, a real backup, the real command serving it, and qemu-img and
 * qemu-io as the NBD clients a sysadmin would use (the kernel's nbd module is not available here, so no
 * mount; qemu reads through the same protocol).
 */

const execFileP = promisify(execFile);
/** A hung qemu must fail its test, not outlive it. */
const QEMU = { timeout: 60_000 };
const MiB = 1024 * 1024;

let server: TestServer;
let env: Record<string, string>;
let dir: string;
let image: Buffer;
let snapshot: string;

test.before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'dv-nbd-e2e-'));
  const content = Buffer.concat([
    randomBytes(5 * MiB),
    Buffer.alloc(3 * MiB),
    Buffer.from('a file that someone deleted by mistake\n'.repeat(60_000)),
    randomBytes(4 * MiB + 4321),
  ]);
  // A disk is whole 512-byte sectors (qemu rounds any other size up).
  image = Buffer.concat([content, Buffer.alloc((512 - (content.length % 512)) % 512)]);
  await writeFile(join(dir, 'disk.img'), image);
  // No server-side chunk cache: the damaged-chunk test must read what is on disk. No gc grace: only the
  // hold an export takes keeps a forgotten snapshot's chunks.
  server = await startTestServer({ cacheBytes: 1, gcGraceMs: 0 });
  env = {
    DISKVAULT_SERVER: server.url,
    DISKVAULT_TOKEN: await server.makeToken('agent', ['nbd1']),
    DISKVAULT_CONFIG: '/nonexistent/agent.json',
  };
  const b = await runCli(['backup', join(dir, 'disk.img'), '--host', 'nbd1', '--disk', 'sda', '--json'], env);
  if (b.code !== 0 || !b.summary) throw new Error(`backup failed: ${b.stderr}`);
  snapshot = b.summary.snapshot;
});

test.after.always(async () => {
  await server?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Starts `diskvault nbd` and resolves with its port once it prints its --json listening line. */
async function startNbd(
  args: string[],
): Promise<{ child: ChildProcess; port: number; info: Record<string, unknown>; stderr: () => string }> {
  const child = spawn(DISKVAULT, ['nbd', ...args, '--listen', '127.0.0.1:0', '--json'], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  let stdout = '';
  const info = await new Promise<Record<string, unknown>>((resolve, reject) => {
    child.stdout?.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
      const line = stdout.split('\n').find((l) => l.startsWith('{'));
      if (line) resolve(JSON.parse(line));
    });
    child.on('exit', (code) => reject(new Error(`diskvault nbd exited ${code}: ${stderr}`)));
  });
  return { child, port: Number(info.port), info, stderr: () => stderr };
}

async function stop(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null) return child.exitCode;
  child.kill('SIGTERM');
  const [code] = await once(child, 'exit');
  return code as number | null;
}

test.serial(
  'diskvault nbd serves a snapshot that qemu-img copies bit for bit, over the fetch stream, and stops cleanly on SIGTERM',
  async (t) => {
    const logsBefore = server.logs.length;
    const nbd = await startNbd(['latest', '--host', 'nbd1', '--disk', 'sda']);
    try {
      t.is(nbd.info.type, 'listening');
      t.is(nbd.info.snapshot, snapshot);
      t.is(nbd.info.size, image.length);
      t.is(nbd.info.export, snapshot);
      const out = join(dir, 'copy.raw');
      // The default export (no name) and the named one are the same disk.
      await execFileP(
        'qemu-img',
        ['convert', '-f', 'raw', '-O', 'raw', `nbd://127.0.0.1:${nbd.port}`, out],
        QEMU,
      );
      t.is(sha256(await readFile(out)), sha256(image));
      const info = JSON.parse(
        (
          await execFileP(
            'qemu-img',
            ['info', '--output=json', `nbd://127.0.0.1:${nbd.port}/${snapshot}`],
            QEMU,
          )
        ).stdout,
      );
      t.is(info['virtual-size'], image.length);
      // One file's bytes, read without the rest of the disk: qemu-io checks the pattern itself.
      const at = 8 * MiB;
      const read = await execFileP(
        'qemu-io',
        ['-r', '-f', 'raw', '-c', `read -v ${at} 39`, `nbd://127.0.0.1:${nbd.port}`],
        QEMU,
      );
      t.is(dumpedBytes(read.stdout).toString(), 'a file that someone deleted by mistake\n');
      t.notRegex(nbd.stderr(), /\n\s+at /, 'no stack trace');
    } finally {
      t.is(await stop(nbd.child), 0);
    }
    // Every chunk the export read came over the one fetch stream its lease offered, none as its own GET:
    // qemu read the whole disk, so at least every distinct chunk that is not all zeros.
    const client = new DiskvaultClient({ server: env.DISKVAULT_SERVER, token: env.DISKVAULT_TOKEN });
    const { entries } = await readSnapshot(client, snapshot);
    client.close();
    const dataChunks = new Set(
      entries.filter((e) => e.id !== sha256(Buffer.alloc(e.length))).map((e) => e.id),
    ).size;
    const { streams, gets } = await downloadsLoggedSince(server, logsBefore);
    t.is(streams.length, 1, JSON.stringify(streams));
    t.true(
      streams[0]!.chunks >= dataChunks,
      `${streams[0]!.chunks} chunks streamed, ${dataChunks} hold data`,
    );
    t.is(gets.length, 0, gets.join('\n'));
  },
);

test.serial(
  'a chunk damaged in storage: reads that need it fail with EIO and the chunk is named; the rest of the disk still reads',
  async (t) => {
    const client = new DiskvaultClient({ server: env.DISKVAULT_SERVER, token: env.DISKVAULT_TOKEN });
    const { entries } = await readSnapshot(client, snapshot);
    client.close();
    // A data chunk in the last stretch of random bytes.
    let offset = 0;
    let victim = entries[0];
    let victimOffset = 0;
    for (const e of entries) {
      if (offset > image.length - 3 * MiB && victimOffset === 0) {
        victim = e;
        victimOffset = offset;
      }
      offset += e.length;
    }
    await corruptStoredChunk(server.dataDir, victim.id);

    const nbd = await startNbd([snapshot]);
    try {
      const bad = await execFileP(
        'qemu-io',
        ['-r', '-f', 'raw', '-c', `read ${victimOffset} 4096`, `nbd://127.0.0.1:${nbd.port}`],
        QEMU,
      ).catch((e: { stdout?: string; stderr?: string }) => e);
      t.regex(`${bad.stdout ?? ''}${bad.stderr ?? ''}`, /Input\/output error/);
      t.regex(nbd.stderr(), new RegExp(`offset \\d+ failed, the client got EIO: .*${victim.id}`));
      // And reported: the server holds the copy damaged, so the next backup of the disk uploads it again.
      await pollUntil(
        () => nbd.stderr(),
        (text) => text.includes(`chunk ${victim.id}: the server has marked its copy damaged`),
        'the damage report',
      );
      const good = await execFileP(
        'qemu-io',
        ['-r', '-f', 'raw', '-c', 'read -v 0 16', `nbd://127.0.0.1:${nbd.port}`],
        QEMU,
      );
      t.true(dumpedBytes(good.stdout).equals(image.subarray(0, 16)), good.stdout);
    } finally {
      t.is(await stop(nbd.child), 0);
    }
  },
);

test.serial(
  'a snapshot forgotten and collected while it is served stays readable until diskvault nbd stops',
  async (t) => {
    // Two nights of another disk; the older one is served, then forgotten with --prune (gc, no grace).
    const older = Buffer.concat([
      randomBytes(3 * MiB),
      Buffer.from('only in the older night\n'.repeat(40_000)),
    ]);
    const sized = Buffer.concat([older, Buffer.alloc((512 - (older.length % 512)) % 512)]);
    await writeFile(join(dir, 'sdb-1.img'), sized);
    await writeFile(join(dir, 'sdb-2.img'), randomBytes(2 * MiB));
    const ids = await backupNights(
      env,
      ['sdb-1.img', 'sdb-2.img'].map((f) => join(dir, f)),
      'nbd1',
      'sdb',
    );
    const nbd = await startNbd([ids[0]]);
    let stopped = false;
    try {
      const forget = await runJob(server.url, server.adminToken, '/v1/forget', {
        policy: { last: 1 },
        host: 'nbd1',
        disk: 'sdb',
        prune: true,
      });
      t.is(forget.state, 'done', JSON.stringify(forget));
      const forgot = forget.result;
      t.is(forgot.removed, 1);
      // Held by the export's lease alone.
      const held = forgot.gc.chunksHeld;
      t.is(forgot.gc.chunksDeleted, 0);
      t.deepEqual(
        forgot.gc.holders.map((h: { kind: string; snapshot: string; chunks: number }) => [
          h.kind,
          h.snapshot,
          h.chunks,
        ]),
        [['lease', ids[0], held]],
      );
      const out = join(dir, 'forgotten.raw');
      await execFileP(
        'qemu-img',
        ['convert', '-f', 'raw', '-O', 'raw', `nbd://127.0.0.1:${nbd.port}`, out],
        QEMU,
      );
      t.is(sha256(await readFile(out)), sha256(sized));
      t.is(await stop(nbd.child), 0);
      stopped = true;
      // Released: gc now frees exactly what the lease held.
      const gc = await runJob(server.url, server.adminToken, '/v1/gc');
      t.is(gc.result.chunksDeleted, held, JSON.stringify(gc.result));
      t.true(held >= 10, `the forgotten night had ${held} chunks of its own`);
      t.deepEqual(gc.result.holders, []);
    } finally {
      if (!stopped) await stop(nbd.child);
    }
  },
);

test.serial(
  'bad arguments: an unknown snapshot exits 1 with one line; a bad --listen is a usage error',
  async (t) => {
    const missing = await runCli(['nbd', 'ffff'], env);
    t.is(missing.code, 1);
    t.regex(missing.stderr, /no snapshot id starts with ffff/);
    t.notRegex(missing.stderr, /\n\s+at /);
    const listen = await runCli(['nbd', snapshot, '--listen', 'nowhere'], env);
    t.is(listen.code, 2);
    t.regex(listen.stderr, /--listen/);
  },
);

/** The bytes of a `qemu-io -c 'read -v …'` hex dump ("00800000:  61 20 66 …  a.file…"). */
function dumpedBytes(stdout: string): Buffer {
  const hex = [...stdout.matchAll(/^[0-9a-f]{8}:\s+((?:[0-9a-f]{2} )+)/gm)].map((m) =>
    m[1].replace(/ /g, ''),
  );
  return Buffer.from(hex.join(''), 'hex');
}

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

test.serial(
  'an end-to-end snapshot: served bit for bit with its key; without it, nbd stops before listening and names the key',
  async (t) => {
    const pw = join(dir, 'e2e.pw');
    await writeFile(pw, 'nbd passphrase\n');
    const key = join(dir, 'e2e.key');
    const made = await runCli(['key', 'create', '--out', key, '--password-file', pw], env);
    t.is(made.code, 0, made.stderr);
    const b = await runCli(
      [
        'backup',
        join(dir, 'disk.img'),
        '--host',
        'nbd1',
        '--disk',
        'sdb',
        '--json',
        '--key',
        key,
        '--password-file',
        pw,
      ],
      env,
    );
    t.is(b.code, 0, b.stderr);
    const without = await runCli(
      ['nbd', 'latest', '--host', 'nbd1', '--disk', 'sdb', '--listen', '127.0.0.1:0'],
      env,
    );
    t.is(without.code, 1);
    t.regex(without.stderr, /is encrypted end to end with key [0-9a-f]{32}: give its key file with --key/);
    const nbd = await startNbd([
      'latest',
      '--host',
      'nbd1',
      '--disk',
      'sdb',
      '--key',
      key,
      '--password-file',
      pw,
    ]);
    try {
      const out = join(dir, 'e2e-copy.raw');
      await execFileP(
        'qemu-img',
        ['convert', '-f', 'raw', '-O', 'raw', `nbd://127.0.0.1:${nbd.port}`, out],
        QEMU,
      );
      t.is(sha256(await readFile(out)), sha256(image));
    } finally {
      t.is(await stop(nbd.child), 0);
    }
  },
);
