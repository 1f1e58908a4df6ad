import { isIP } from 'node:net';
import { EXIT_OK, UsageError } from '../../common/cli.js';
import { isDiskvaultError } from '../../common/errors.js';
import { formatBytes, parseListen, parseSize } from '../../common/units.js';
import { ManifestReader } from '../../repo-engine/manifest-codec.js';
import { type ChunkHold, holdSnapshot } from '../chunk-hold.js';
import { parseCommandArgs, resolveClientConfig } from '../cli-support.js';
import { DiskvaultClient } from '../client.js';
import { describeVerdict, reportDamage } from '../damage-report.js';
import { KEY_OPTIONS, keyForSnapshot, openedHeader, workerKeys } from '../e2e/snapshot-key.js';
import { NbdServer } from '../nbd/nbd-server.js';
import { SnapshotImage } from '../nbd/snapshot-image.js';
import { warnIfPlainHttp } from '../plain-http.js';
import { decodeChunk } from '../restore/chunk-decoder.js';
import { DecodePool } from '../restore/decode-pool.js';
import { fetcherFor } from '../restore/fetcher-for.js';
import { formatRange } from '../restore/ranges.js';
import { selectSnapshot } from '../restore/snapshot-selector.js';

const USAGE = `usage: diskvault nbd SNAPSHOT [options]

Serves a snapshot read-only over NBD (the network block device protocol), so its filesystems can be
mounted and single files copied out without restoring the whole disk. Chunks are downloaded when first
read, checked against their ids, and cached. Runs until interrupted (Ctrl-C or SIGTERM).

SNAPSHOT  a snapshot id, an id prefix, or 'latest' (with --host and --disk)

options:
  --server URL, --token T, --config FILE   where the repository is (also DISKVAULT_SERVER / DISKVAULT_TOKEN)
  --cacert FILE                            for https: trust this CA's (or the server's own) certificate
  --host NAME, --disk NAME                 narrow 'latest' or an id prefix
  --listen HOST:PORT                       where to serve (default 127.0.0.1:10809)
  --name NAME                              the export's name (default the snapshot id; '' also reaches it)
  --cache SIZE                             chunk cache (default 256M)
  --limit-download RATE                    cap download bandwidth: KiB/s as in restic, or 500K, 20M, 1G
  --key FILE, --password-file FILE         the key of an end-to-end snapshot (or DISKVAULT_KEY), its passphrase
  --json                                   the listening line as JSON

then, for example:
  nbd-client 127.0.0.1 10809 /dev/nbd0 -readonly && mount -o ro /dev/nbd0p1 /mnt
  qemu-img convert -O raw nbd://127.0.0.1:10809 disk.img
  guestfish --ro -a nbd://127.0.0.1:10809 -i
`;

export async function run(argv: string[], command: string): Promise<number> {
  const { values, positionals } = parseCommandArgs(argv, {
    listen: { type: 'string' },
    name: { type: 'string' },
    cache: { type: 'string' },
    ...KEY_OPTIONS,
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return EXIT_OK;
  }
  if (positionals.length !== 1) throw new UsageError(`${command} needs one SNAPSHOT`);
  let listen: { host: string; port: number };
  let cacheBytes: number;
  try {
    listen = parseListen(values.listen ?? '127.0.0.1:10809');
    cacheBytes = parseSize(values.cache ?? '256M');
  } catch (err) {
    throw new UsageError((err as Error).message);
  }

  const cfg = resolveClientConfig(values);
  warnIfPlainHttp(cfg.server, command, values.json === true);
  const client = new DiskvaultClient({ ...cfg, concurrency: 16 });
  let fetcher: ReturnType<typeof fetcherFor> | undefined;
  let decoders: DecodePool | undefined;
  let server: NbdServer | undefined;
  let hold: ChunkHold | undefined;
  try {
    const snapshot = await selectSnapshot(client, positionals[0], { host: values.host, disk: values.disk });
    // An end-to-end snapshot is served only with its key, opened before anything listens.
    const e2e = await keyForSnapshot(snapshot, values);
    const pool = new DecodePool(undefined, undefined, e2e ? workerKeys(e2e) : undefined);
    decoders = pool;
    // Held for as long as we serve: a snapshot forgotten meanwhile stays readable until we stop.
    hold = await holdSnapshot(client, snapshot.id, (m) =>
      process.stderr.write(`diskvault ${command}: warning: ${m}\n`),
    );
    const chunks = fetcherFor(client, hold);
    fetcher = chunks;
    const reader = await ManifestReader.open(await client.getManifest(snapshot.id), 'wire');
    const image = await SnapshotImage.load(
      openedHeader(e2e, { ...reader.header, id: reader.header.id ?? snapshot.id }, snapshot.id),
      reader.entryBatches(),
      async (id, length) => {
        // As in a restore: decompression and the hash check run on worker threads, off the thread that
        // answers the NBD clients.
        const fetched = await chunks.fetch(id, length);
        return fetched.verified && !e2e
          ? decodeChunk(fetched, id, length)
          : await pool.decode(fetched, id, length);
      },
      cacheBytes,
    );
    // A chunk a read found wrong is reported to the server once (clients retry reads), in the background:
    // the server then marks a bad copy damaged, and the next backup that has the chunk uploads it again.
    const reported = new Set<string>();
    const reportOnce = (err: unknown) => {
      const chunk = isDiskvaultError(err) ? err.details?.chunk : undefined;
      if (typeof chunk !== 'string' || reported.has(chunk)) return;
      reported.add(chunk);
      const say = (line: string) => process.stderr.write(`diskvault ${command}: ${line}\n`);
      void reportDamage(client, [{ chunk, detail: (err as Error).message }], (line) =>
        say(`warning: ${line}`),
      ).then((verdicts) => {
        for (const v of verdicts) say(describeVerdict(v));
      });
    };
    const name = values.name ?? snapshot.id;
    server = new NbdServer(
      {
        name,
        description: `diskvault snapshot ${snapshot.id} of ${snapshot.host}/${snapshot.disk} at ${snapshot.time}`,
        size: image.size,
        read: (offset, length) => image.read(offset, length),
      },
      {
        onReadError: (err, offset, length) => {
          process.stderr.write(
            `diskvault ${command}: read of ${length} bytes at offset ${offset} failed, the client got EIO: ${(err as Error).message}\n`,
          );
          reportOnce(err);
        },
      },
    );
    const address = await server.listen(listen.port, listen.host);
    const where = `${isIP(address.address) === 6 ? `[${address.address}]` : address.address}:${address.port}`;
    if (values.json) {
      process.stdout.write(
        `${JSON.stringify({ type: 'listening', snapshot: snapshot.id, host: snapshot.host, disk: snapshot.disk, time: snapshot.time, size: image.size, address: address.address, port: address.port, export: name })}\n`,
      );
    } else {
      process.stdout.write(
        `serving snapshot ${snapshot.id} (${snapshot.host}/${snapshot.disk}, ${snapshot.time}, ${formatBytes(image.size)}) read-only over NBD on ${where}, export '${name}'\n`,
      );
    }
    if (!isLoopback(address.address)) {
      process.stderr.write(
        `diskvault ${command}: warning: NBD has no authentication or encryption here: anyone who can reach ${where} can read this disk\n`,
      );
    }
    if (image.header.unreadable.length > 0) {
      process.stderr.write(
        `diskvault ${command}: warning: ${image.header.unreadable.length} range(s) were unreadable at backup time and read as zeros: ${image.header.unreadable.map(formatRange).join(', ')}\n`,
      );
    }
    await new Promise<void>((resolve) => {
      process.once('SIGINT', resolve);
      process.once('SIGTERM', resolve);
    });
    return EXIT_OK;
  } finally {
    await server?.close();
    fetcher?.close();
    await hold?.release();
    await decoders?.close();
    client.close();
  }
}

function isLoopback(address: string): boolean {
  return address === '::1' || address.startsWith('127.') || address === '::ffff:127.0.0.1';
}
