import test from 'ava';
import { backupSuite } from '../helpers/backup-suite.js';

// Chunks smaller than production (64 KiB / 256 KiB / 1 MiB) so each window holds many and edges are crossed often.
backupSuite(test, 'local', {
  chunker: { min: 64 * 1024, avg: 256 * 1024, max: 1024 * 1024 },
  readBack: 'all',
});
