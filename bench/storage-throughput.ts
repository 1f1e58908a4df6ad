import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { StorageAdapter } from '../storage-adapters/adapter.js';
import { openLocalStorage } from '../storage-adapters/local.js';
import { openS3Storage } from '../storage-adapters/s3.js';
import { startFakeS3 } from '../test/helpers/fake-s3.js';
import { forEachLimited } from './lib/for-each-limited.js';

/**
 * Put and get throughput of each adapter: OBJECTS objects of 1 MiB, CONCURRENCY in flight, keys fanned
 * out as the engine does. S3 runs against the in-process fake server, so its figure measures the adapter
 * and HTTP stack, not a real network. Usage: node dist/bench/storage-throughput.js [objects] [concurrency]
 */
const MiB = 1024 * 1024;
const OBJECTS = Number(process.argv[2] ?? 512);
const CONCURRENCY = Number(process.argv[3] ?? 8);

function keyOf(i: number): string {
  const hex = i.toString(16).padStart(8, '0');
  return `chunks/${hex.slice(0, 2)}/${hex}`;
}

async function measure(name: string, storage: StorageAdapter): Promise<void> {
  const payload = randomBytes(MiB);
  const mb = (OBJECTS * MiB) / 1e6;
  let start = performance.now();
  await forEachLimited(OBJECTS, CONCURRENCY, (i) => storage.put(keyOf(i), payload));
  const putSeconds = (performance.now() - start) / 1000;
  start = performance.now();
  await forEachLimited(OBJECTS, CONCURRENCY, async (i) => {
    const bytes = await storage.getBytes(keyOf(i));
    if (bytes.length !== MiB) throw new Error(`short read of ${keyOf(i)}`);
  });
  const getSeconds = (performance.now() - start) / 1000;
  console.log(
    `${name.padEnd(8)} put ${(mb / putSeconds).toFixed(1).padStart(7)} MB/s   get ${(mb / getSeconds).toFixed(1).padStart(7)} MB/s   (${OBJECTS} x 1 MiB, ${CONCURRENCY} concurrent)`,
  );
}

const root = await mkdtemp(path.join(os.tmpdir(), 'dv-bench-storage-'));
const fake = await startFakeS3();
try {
  const local = await openLocalStorage(root);
  await measure('local', local);
  await local.close();
  const s3 = await openS3Storage({
    endpoint: fake.endpoint,
    region: fake.region,
    bucket: fake.bucket,
    forcePathStyle: true,
    credentials: { accessKeyId: fake.accessKeyId, secretAccessKey: fake.secretAccessKey },
  });
  await measure('s3-fake', s3);
  await s3.close();
} finally {
  await fake.stop();
  await rm(root, { recursive: true, force: true });
}
