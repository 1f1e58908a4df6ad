/**
 * Runs the test suite's fake S3 server (s3rver on 127.0.0.1) as its own process, so the benchmark's server
 * talks to it over real HTTP like to any S3 endpoint. Prints its settings as one JSON line, stops on SIGTERM.
 */
import { startFakeS3 } from '../test/helpers/fake-s3.js';

const s3 = await startFakeS3();
process.stdout.write(`${JSON.stringify({ ...s3, stop: undefined })}\n`);
process.on('SIGTERM', () => {
  void s3.stop().then(() => process.exit(0));
});
