import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { CreateBucketCommand, DeleteBucketCommand, S3Client } from '@aws-sdk/client-s3';
import test from 'ava';
import { openS3Storage } from '../../storage-adapters/s3.js';
import { type FakeS3, startFakeS3 } from '../helpers/fake-s3.js';
import { storageContract } from '../helpers/storage-contract.js';

let server: FakeS3 | undefined;
let prefixes = 0;

test.before(async () => {
  server = await startFakeS3();
});
test.after.always(async () => {
  await server?.stop();
});

// Each test gets its own key prefix in the one bucket; a page size of 100 makes listings cross pages.
storageContract('s3', async () => {
  if (!server) throw new Error('fake S3 server not started');
  const adapter = await openS3Storage({
    endpoint: server.endpoint,
    region: server.region,
    bucket: server.bucket,
    prefix: `contract-${++prefixes}`,
    forcePathStyle: true,
    credentials: { accessKeyId: server.accessKeyId, secretAccessKey: server.secretAccessKey },
    pageSize: 100,
    maxAttempts: 2,
  });
  return { adapter, cleanup: async () => {} };
});

const optionsFor = (s3: FakeS3, bucket: string, endpoint = s3.endpoint) => ({
  endpoint,
  region: s3.region,
  bucket,
  forcePathStyle: true,
  credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
  maxAttempts: 1,
});

// A typo in the bucket's name must never read as an empty repository ("no config": the create path).
test('s3: opening a bucket that does not exist fails as InvalidInput naming it, not as an absent key', async (t) => {
  if (!server) throw new Error('fake S3 server not started');
  const err = await t.throwsAsync(openS3Storage(optionsFor(server, 'no-such-bucket-typo')), {
    code: 'InvalidInput',
  });
  t.regex(err?.message ?? '', /bucket no-such-bucket-typo does not exist/);
});

test('s3: a bucket deleted after the open fails reads, deletes and listings as Unavailable, never NotFound', async (t) => {
  if (!server) throw new Error('fake S3 server not started');
  const bucket = `gone-${++prefixes}`;
  const client = new S3Client({ ...optionsFor(server, bucket) });
  try {
    await client.send(new CreateBucketCommand({ Bucket: bucket }));
    const adapter = await openS3Storage(optionsFor(server, bucket));
    try {
      await client.send(new DeleteBucketCommand({ Bucket: bucket }));
      const gone = { code: 'Unavailable', message: new RegExp(`the bucket ${bucket} does not exist`) };
      await t.throwsAsync(adapter.getBytes('config'), gone);
      await t.throwsAsync(adapter.get('chunks/ab/x'), gone);
      await t.throwsAsync(adapter.getBytes('chunks/ab/x', { start: 0, end: 9 }), gone);
      await t.throwsAsync(adapter.delete('config'), gone);
      await t.throwsAsync(async () => {
        for await (const _ of adapter.list('')) t.fail('listed a key');
      }, gone);
    } finally {
      await adapter.close();
    }
  } finally {
    client.destroy();
  }
});

/**
 * Where a policy refuses HeadBucket (a key-prefix-scoped role may), the open cannot tell whether the bucket
 * exists: a 404 to HEAD (no body) is then settled by a GET, whose error body names what is missing.
 */
test('s3: stat tells a missing bucket from a missing key when the open could not check the bucket', async (t) => {
  if (!server) throw new Error('fake S3 server not started');
  const upstream = new URL(server.endpoint);
  const proxy = http.createServer((req, res) => {
    const bucketOnly = /^\/[^/?]+\/?(\?|$)/.test(req.url ?? '');
    if (req.method === 'HEAD' && bucketOnly) {
      res.writeHead(403).end();
      return;
    }
    const out = http.request(
      {
        host: upstream.hostname,
        port: upstream.port,
        method: req.method,
        path: req.url,
        headers: req.headers,
      },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      },
    );
    out.on('error', () => res.destroy());
    req.pipe(out);
  });
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  const endpoint = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`;
  try {
    const missing = await openS3Storage(optionsFor(server, 'no-such-bucket-typo', endpoint));
    try {
      await t.throwsAsync(missing.stat('config'), {
        code: 'Unavailable',
        message: /bucket no-such-bucket-typo does not exist/,
      });
    } finally {
      await missing.close();
    }
    const present = await openS3Storage({
      ...optionsFor(server, server.bucket, endpoint),
      prefix: 'unchecked',
    });
    try {
      t.is(await present.stat('config'), undefined);
      await present.put('config', Buffer.from('{}'));
      t.is((await present.stat('config'))?.size, 2);
      t.is(await present.stat('absent'), undefined);
    } finally {
      await present.close();
    }
  } finally {
    await new Promise((resolve) => proxy.close(resolve));
  }
});
