import { Readable } from 'node:stream';
import { openLocalStorage } from '../../storage-adapters/local.js';

/**
 * Child process for the crash-safety test: streams a large put into a local store and reports progress on
 * stdout so the parent can SIGKILL it mid-way. Usage: node put-child.js <root> <key> <MiB>.
 * Chunk i of the value is 1 MiB of the byte (i & 0xff), so the parent can recompute the expected value.
 */
const MiB = 1024 * 1024;
const [root, key, mib] = process.argv.slice(2);
const total = Number(mib);

let sent = 0;
const source = new Readable({
  read() {
    if (sent === total) {
      this.push(null);
      return;
    }
    this.push(Buffer.alloc(MiB, sent & 0xff));
    sent++;
    if (sent % 16 === 0) process.stdout.write(`sent ${sent}\n`);
  },
});

const storage = await openLocalStorage(root);
await storage.put(key, source);
process.stdout.write('done\n');
