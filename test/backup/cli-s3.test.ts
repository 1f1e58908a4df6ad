import test from 'ava';
import { backupSuite } from '../helpers/backup-suite.js';

// Production-sized chunks and a partial read-back: the fake S3 server is slow per object.
backupSuite(test, 's3', {
  chunker: { min: 256 * 1024, avg: 1024 * 1024, max: 4 * 1024 * 1024 },
  readBack: 'new',
});
