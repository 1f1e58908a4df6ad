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
