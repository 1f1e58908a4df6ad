import { execFile, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { DiskvaultClient } from '../../agent/client.js';
import { readSnapshot, runCli } from './backup-e2e.js';
import { startTestServer, type TestServer, type TestServerOptions } from './server.js';

export const execFileP = promisify(execFile);

/**
 * A real server holding one backed-up disk image (made by the real `diskvault backup`): random data with a
 * repeated stretch (dedup), a long zero run (zero chunks) and a size that is whole sectors but not whole
 * chunks (a short last chunk; qemu would round any other size up to a sector, as no disk has one).
 */
export interface ImageFixture {
  server: TestServer;
  dir: string;
  source: string;
  image: Buffer;
  snapshot: string;
  entries: { id: string; length: number }[];
  host: string;
  disk: string;
  env: Record<string, string>;
  url: string;
  close(): Promise<void>;
}

export function makeImage(): Buffer {
  const a = randomBytes(3 * 1024 * 1024);
  return Buffer.concat([
    a,
    Buffer.alloc(2 * 1024 * 1024),
    randomBytes(1024 * 1024 + 4608),
    a.subarray(0, 1 << 20),
  ]);
}

export async function imageFixture(opts: TestServerOptions = {}, image = makeImage()): Promise<ImageFixture> {
  const server = await startTestServer(opts);
  const dir = await mkdtemp(join(tmpdir(), 'dv-image-'));
  const source = join(dir, 'source.img');
  await writeFile(source, image);
  const host = 'web1';
  const disk = 'sda';
  const env = { DISKVAULT_SERVER: server.url, DISKVAULT_TOKEN: server.adminToken };
  const b = await runCli(['backup', source, '--host', host, '--disk', disk, '--json'], env);
  if (b.code !== 0 || !b.summary) throw new Error(`backup failed (${b.code}): ${b.stderr}`);
  const snapshot = b.summary.snapshot;
  const client = new DiskvaultClient({ server: server.url, token: server.adminToken });
  const { entries } = await readSnapshot(client, snapshot);
  client.close();
  return {
    server,
    dir,
    source,
    image,
    snapshot,
    entries,
    host,
    disk,
    env,
    url: `${server.url}/v1/snapshots/${snapshot}/image`,
    close: async () => {
      await server.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

export interface CurlResult {
  code: number;
  stderr: string;
}

/**
 * A TCP pass-through to `targetUrl`'s server that cuts each connection once `bytes` bytes of the answer have
 * gone back to the client: a download broken off midway at a point that does not depend on timing (curl's
 * --limit-rate lets the first megabytes through at once, so a kill timed by the file's size can come late).
 */
export async function cuttingProxy(
  targetUrl: string,
  bytes: number,
): Promise<{ url: string; close(): Promise<void> }> {
  const target = new URL(targetUrl);
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(target.port), target.hostname);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {});
    }
    let left = bytes;
    client.on('data', (d: Buffer) => upstream.write(d));
    upstream.on('data', (d: Buffer) => {
      client.write(d.subarray(0, left));
      left -= Math.min(left, d.length);
      if (left === 0) {
        client.end();
        upstream.destroy();
      }
    });
    client.on('close', () => upstream.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = new URL(targetUrl);
  url.port = String((server.address() as net.AddressInfo).port);
  return {
    url: url.toString(),
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** Runs curl to completion (never throws on its exit code). */
export function curl(args: string[]): Promise<CurlResult> {
  return new Promise((resolve, reject) => {
    const child = spawn('curl', ['-sS', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? -1, stderr }));
  });
}

export async function fileSize(path: string): Promise<number> {
  return (await stat(path).catch(() => ({ size: 0 }))).size;
}

export { readFile };
