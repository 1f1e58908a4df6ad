import { mkdtemp, rm } from 'node:fs/promises';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';

/**
 * An in-process S3 server (s3rver) for tests and benchmarks: real HTTP, real SigV4, real XML, so the S3
 * adapter is tested against a server rather than a mock. Each call gets its own temp directory and port.
 */
export interface FakeS3 {
  endpoint: string;
  bucket: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
  stop(): Promise<void>;
}

// s3rver ships no type declarations; this is the little of it we use.
interface S3rverInstance {
  run(): Promise<AddressInfo>;
  close(): Promise<void>;
  httpServer?: Server;
}
type S3rverConstructor = new (options: Record<string, unknown>) => S3rverInstance;

const require = createRequire(import.meta.url);

export async function startFakeS3(bucket = 'diskvault-test'): Promise<FakeS3> {
  const S3rver = require('s3rver') as S3rverConstructor;
  const directory = await mkdtemp(path.join(os.tmpdir(), 'dv-fake-s3-'));
  const server = new S3rver({
    address: '127.0.0.1',
    port: 0,
    silent: true,
    directory,
    configureBuckets: [{ name: bucket }],
  });
  let address: AddressInfo;
  try {
    address = await server.run();
  } catch (err) {
    await rm(directory, { recursive: true, force: true });
    throw err;
  }
  let stopped = false;
  return {
    endpoint: `http://127.0.0.1:${address.port}`,
    bucket,
    region: 'us-east-1',
    // s3rver's built-in account; it checks signatures, so these must match.
    accessKeyId: 'S3RVER',
    secretAccessKey: 'S3RVER',
    async stop() {
      if (stopped) return;
      stopped = true;
      // Keep-alive sockets from the SDK would otherwise hold close() open.
      server.httpServer?.closeAllConnections();
      await server.close();
      await rm(directory, { recursive: true, force: true });
    },
  };
}
