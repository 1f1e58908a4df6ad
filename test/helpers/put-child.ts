import { Readable } from 'node:stream';
import { openLocalStorage } from '../../storage-adapters/local.js';

/**
 * Child process for the crash-safety test: streams a large put into a local store and reports progress on
 * stdout so the parent can SIGKILL it mid-way. Usage: node put-child.js <root> <key> <MiB> [holdAtMiB].
 * Chunk i of the value is 1 MiB of the byte (i & 0xff), so the parent can recompute the expected value.
 * With holdAtMiB, the source stops there and says "holding" once the put has taken everything before it,
 * so a kill always lands mid-put: on a fast machine the whole put could otherwise end before the kill.
 */
const MiB = 1024 * 1024;
const [root, key, mib] = process.argv.slice(2);
const total = Number(mib);
const holdAt = process.argv[5] === undefined ? undefined : Number(process.argv[5]);

let sent = 0;
const source = new Readable({
  read() {
    if (sent === holdAt) {
      // Nothing more is pushed: the put waits here until the parent kills this process (the timer keeps
      // node from exiting with the put's await unsettled).
      setInterval(() => {}, 60_000);
      process.stdout.write(`holding ${sent}\n`);
      return;
    }
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
