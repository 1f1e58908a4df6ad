import { readFile, stat } from 'node:fs/promises';
import type { TestFn } from 'ava';
import fastcdc from 'fastcdc-wasm';
import { DiskvaultClient } from '../../agent/client.js';
import type { ChunkerParams } from '../../repo-engine/manifest-codec.js';
import { readSnapshot, runCli, sha256File } from './backup-e2e.js';
import { distinctChunks } from './reliability-tripwire.js';
import { startTestServer, type TestServer } from './server.js';
import { workload256M } from './workload.js';

/**
 * The backup behaviour every storage backend must show, through a real server and the real CLI: four
 * nights of an ext4 disk, each later night sending only a small part of the image, every snapshot naming
 * exactly the chunks one fastcdc pass over the whole image gives, and the data readable back bit-exact.
 */
export interface BackupSuiteOptions {
  chunker?: ChunkerParams;
  /** 'all' reads every chunk of the last night back; 'new' only those not in night0 (slow backends). */
  readBack: 'all' | 'new';
}

/** The chunker parameters a snapshot was cut with, read from its manifest. */
async function chunkerOf(server: string, token: string, snapshot: string): Promise<ChunkerParams> {
  const client = new DiskvaultClient({ server, token });
  try {
    return (await readSnapshot(client, snapshot)).header.chunker;
  } finally {
    client.close();
  }
}

/**
 * The distinct chunks of one fastcdc pass over `image` that `held` lacks, counted and summed; they are then
 * added to `held`, as the repository holds them once this night is stored.
 */
async function newChunksOf(
  image: string,
  chunker: ChunkerParams,
  held: Set<string>,
): Promise<{ chunks: number; bytes: number }> {
  let chunks = 0;
  let bytes = 0;
  for (const [id, length] of await distinctChunks(image, chunker)) {
    if (held.has(id)) continue;
    held.add(id);
    chunks++;
    bytes += length;
  }
  return { chunks, bytes };
}

export function backupSuite(test: TestFn, storage: 'local' | 's3', opts: BackupSuiteOptions): void {
  const { chunker } = opts;
  let server: TestServer;
  let images: string[];
  let env: Record<string, string>;

  test.before(async () => {
    images = await workload256M();
    server = await startTestServer({ storage, ...(chunker ? { chunker } : {}) });
    env = { DISKVAULT_SERVER: server.url, DISKVAULT_TOKEN: await server.makeToken('agent', ['web1']) };
  });
  test.after.always(async () => {
    await server?.stop();
  });

  test.serial(
    `[${storage}] nightly backups upload the whole disk once, then exactly the chunks the repository lacks`,
    async (t) => {
      const summaries = [];
      // What each night must send is worked out here, independently of the agent: the chunks of one fastcdc
      // pass over its image that no earlier night (nor an earlier place in the same image) already holds.
      // How much that is follows from what the workload's generator changes each night, so the check is
      // exact rather than a share of the image.
      const held = new Set<string>();
      let params: ChunkerParams | undefined;
      for (let n = 0; n < 4; n++) {
        // An agent token may give --time only within its backup (an earlier time is an import, for admins).
        const time = new Date().toISOString();
        const r = await runCli(
          [
            'backup',
            images[n],
            '--host',
            'web1',
            '--disk',
            'sda',
            '--time',
            time,
            '--tag',
            `night${n}`,
            '--json',
          ],
          env,
        );
        t.is(r.code, 0, r.stderr);
        t.truthy(r.summary, r.stdout);
        const s = r.summary!;
        const size = (await stat(images[n])).size;
        t.is(s.size, size);
        t.is(s.sha256, await sha256File(images[n]));
        t.deepEqual(s.unreadable, []);
        t.is(s.time, time);
        summaries.push(s);
        params ??= await chunkerOf(server.url, env.DISKVAULT_TOKEN, s.snapshot);
        const expected = await newChunksOf(images[n], params, held);
        t.log(
          `night${n}: ${s.newChunks} of ${s.chunks} chunks new (${expected.chunks} expected), ` +
            `${s.newBytes} raw bytes (${expected.bytes} expected), ${s.bytesUploaded} bytes sent of ${size}`,
        );
        t.is(s.newChunks, expected.chunks, `night${n}: chunks sent`);
        t.is(s.newBytes, expected.bytes, `night${n}: raw bytes sent`);
        // Compression never makes a chunk bigger on the wire: an incompressible one is sent raw.
        t.true(s.bytesUploaded <= s.newBytes, `night${n} sent ${s.bytesUploaded} bytes for ${s.newBytes}`);
        if (n > 0) {
          t.true(s.newChunks < s.chunks, `night${n} sent every chunk again`);
        } else {
          t.true(s.bytesUploaded > 0);
        }
      }
      const client = new DiskvaultClient({ server: server.url, token: env.DISKVAULT_TOKEN });
      try {
        const listed = await client.listSnapshots({ host: 'web1', disk: 'sda' });
        t.deepEqual(listed.map((x) => x.id).sort(), summaries.map((s) => s.snapshot).sort());
      } finally {
        client.close();
      }
    },
  );

  test.serial(
    `[${storage}] a snapshot's chunks are exactly one fastcdc pass over the whole image`,
    async (t) => {
      const client = new DiskvaultClient({ server: server.url, token: env.DISKVAULT_TOKEN });
      try {
        const [snap] = (await client.listSnapshots({ host: 'web1', disk: 'sda' })).filter((s) =>
          s.tags.includes('night2'),
        );
        t.truthy(snap);
        const { header, entries } = await readSnapshot(client, snap.id);
        const data = await readFile(images[2]);
        const { min, avg, max } = header.chunker;
        const offsets = Array.from(fastcdc.get_chunks(data, min, avg, max));
        const lengths = offsets.slice(1).map((end, i) => end - offsets[i]);
        t.deepEqual(
          entries.map((e) => e.length),
          lengths,
        );
        t.is(header.sourceFormat, 'raw');
        t.deepEqual(header.tags, ['night2']);
      } finally {
        client.close();
      }
    },
  );

  test.serial(`[${storage}] the last night's chunks read back bit-exact at their offsets`, async (t) => {
    const client = new DiskvaultClient({ server: server.url, token: env.DISKVAULT_TOKEN, concurrency: 8 });
    try {
      const [snap] = (await client.listSnapshots({ host: 'web1', disk: 'sda' })).filter((s) =>
        s.tags.includes('night3'),
      );
      const { entries } = await readSnapshot(client, snap.id);
      const original = await readFile(images[3]);
      let offset = 0;
      let located = entries.map((e) => {
        const at = offset;
        offset += e.length;
        return { ...e, at };
      });
      t.is(offset, original.length);
      if (opts.readBack === 'new') {
        // The chunks the later nights added, not only night3's.
        const [first] = (await client.listSnapshots({ host: 'web1', disk: 'sda' })).filter((s) =>
          s.tags.includes('night0'),
        );
        const old = new Set((await readSnapshot(client, first.id)).entries.map((e) => e.id));
        located = located.filter((e) => !old.has(e.id));
        t.true(located.length > 0, 'nights 1-3 added no chunk that night3 uses');
      }
      // A bounded number of fetches at once; each checks its own hash inside getChunk.
      for (let i = 0; i < located.length; i += 32) {
        const batch = located.slice(i, i + 32);
        const got = await Promise.all(batch.map((e) => client.getChunk(e.id)));
        batch.forEach((e, k) => {
          if (!got[k].equals(original.subarray(e.at, e.at + e.length))) t.fail(`chunk at ${e.at} differs`);
        });
      }
      t.pass();
    } finally {
      client.close();
    }
  });
}
