import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { mkdir, mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import test from 'ava';
import { runCli } from '../helpers/backup-e2e.js';
import { attachLoop, canMakeLoopDevices, detachLoop, loopTitle } from '../helpers/loop-device.js';
import { startTestServer, type TestServer } from '../helpers/server.js';

/**
 * `diskvault restore` onto real block devices (loop devices over files), through the real server and CLI:
 * every byte written (a device has no holes, so zero chunks must overwrite what was there), in place, too
 * small, and in use. A restore that writes over a mounted filesystem destroys it while the kernel still
 * trusts its cache, so that one must be refused before a byte is written.
 */

const MiB = 1024 * 1024;
const loopTest = canMakeLoopDevices() ? test.serial : test.serial.skip;

let server: TestServer | undefined;
let env: Record<string, string> = {};
let dir = '';
let image = Buffer.alloc(0);
const devices: string[] = [];

test.before(async () => {
  if (!canMakeLoopDevices()) return;
  dir = await mkdtemp(join(tmpdir(), 'dv-restore-dev-'));
  // Data, a zero run longer than the largest chunk (whole zero chunks), text, data: 16 MiB.
  image = Buffer.concat([
    randomBytes(6 * MiB),
    Buffer.alloc(3 * MiB),
    Buffer.from('a disk image, restored onto a device '.repeat((2 * MiB) / 37 + 1)).subarray(0, 2 * MiB),
    randomBytes(5 * MiB),
  ]);
  await writeFile(join(dir, 'disk.img'), image);
  server = await startTestServer();
  env = {
    DISKVAULT_SERVER: server.url,
    DISKVAULT_TOKEN: await server.makeToken('agent', ['dev1']),
    DISKVAULT_CONFIG: '/nonexistent/agent.json',
  };
  const backup = await runCli(
    ['backup', join(dir, 'disk.img'), '--host', 'dev1', '--disk', 'sda', '--json'],
    env,
  );
  if (backup.code !== 0) throw new Error(`backup failed: ${backup.stderr}`);
});

test.after.always(async () => {
  for (const d of devices) {
    try {
      detachLoop(d);
    } catch {}
  }
  await server?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** A loop device over a new file of `size` bytes, each byte `fill` (or the given content). */
async function loopDevice(
  name: string,
  size: number,
  fill: number | Buffer,
  opts: { partitions?: boolean } = {},
): Promise<string> {
  const file = join(dir, name);
  await writeFile(file, typeof fill === 'number' ? Buffer.alloc(size, fill) : fill);
  const device = attachLoop(file, opts);
  devices.push(device);
  return device;
}

/** A classic MBR (DOS) partition table: one Linux partition (type 0x83) per [first sector, sectors]. */
function mbr(partitions: [number, number][]): Buffer {
  const sector = Buffer.alloc(512);
  partitions.forEach(([first, count], i) => {
    const entry = 446 + i * 16;
    sector[entry + 4] = 0x83;
    sector.writeUInt32LE(first, entry + 8);
    sector.writeUInt32LE(count, entry + 12);
  });
  sector.writeUInt16BE(0x55aa, 510);
  return sector;
}

/** The partition devices the kernel shows for a loop device, from sysfs. */
function kernelPartitions(device: string): string[] {
  const name = basename(device);
  return readdirSync(`/sys/class/block/${name}`)
    .filter((n) => n.startsWith(`${name}p`))
    .sort()
    .map((n) => `/dev/${n}`);
}

async function readDevice(device: string, offset: number, length: number): Promise<Buffer> {
  const fh = await open(device, 'r');
  try {
    const buf = Buffer.alloc(length);
    const { bytesRead } = await fh.read(buf, 0, length, offset);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

const restore = (device: string, ...extra: string[]) =>
  runCli(['restore', 'latest', device, '--host', 'dev1', '--disk', 'sda', '--json', ...extra], env);

loopTest(
  loopTitle('a restore onto a device writes every byte, zero chunks too, and nothing past the image'),
  async (t) => {
    const device = await loopDevice('big.dev', 20 * MiB, 0xa5);
    const r = await restore(device);
    t.is(r.code, 0, r.stderr);
    t.is(r.summary?.verified, true);
    t.is(r.summary?.bytesWritten, image.length, 'a device has no holes: zero chunks are written');
    // A loop device attached without partition scanning carries no table: nothing to read again, no warning.
    t.is(r.summary?.partitions, undefined);
    t.notRegex(r.stderr, /warning/);
    t.true((await readDevice(device, 0, image.length)).equals(image));
    t.true((await readDevice(device, image.length, 4 * MiB)).equals(Buffer.alloc(4 * MiB, 0xa5)));

    // In place after damage to part of the zero run and part of the data: only those chunks come back.
    const fh = await open(device, 'r+');
    try {
      await fh.write(Buffer.alloc(64 * 1024, 0xff), 0, 64 * 1024, 7 * MiB);
      await fh.write(randomBytes(64 * 1024), 0, 64 * 1024, 12 * MiB);
      await fh.sync();
    } finally {
      await fh.close();
    }
    const again = await restore(device, '--in-place');
    t.is(again.code, 0, again.stderr);
    t.is(again.summary?.verified, true);
    const fetched = Number(again.summary?.bytesFetched);
    t.true(fetched > 0 && fetched <= 4 * 256 * 1024, `fetched ${fetched} bytes`);
    t.true(Number(again.summary?.bytesReused) >= image.length - 4 * 256 * 1024);
    t.true((await readDevice(device, 0, image.length)).equals(image));
  },
);

loopTest(
  loopTitle(
    'after a whole disk is restored onto a device, the kernel is made to read its partition table again',
  ),
  async (t) => {
    // A disk with two partitions, restored over a device whose table describes one.
    const disk = Buffer.concat([
      mbr([
        [2048, 8192],
        [12288, 20480],
      ]),
      randomBytes(16 * MiB - 512),
    ]);
    await writeFile(join(dir, 'parted.img'), disk);
    const backup = await runCli(
      ['backup', join(dir, 'parted.img'), '--host', 'dev1', '--disk', 'sdb', '--json'],
      env,
    );
    t.is(backup.code, 0, backup.stderr);
    const old = Buffer.concat([mbr([[2048, 30720]]), Buffer.alloc(16 * MiB - 512)]);
    const device = await loopDevice('parted.dev', 16 * MiB, old, { partitions: true });
    // Whether this kernel reads DOS tables at all (CONFIG_MSDOS_PARTITION; some VM kernels have no parser):
    // what it showed for the old table says.
    const kernelReadsTables = kernelPartitions(device).length === 1;
    t.log(`this kernel ${kernelReadsTables ? 'reads' : 'does not read'} DOS partition tables`);

    const r = await runCli(['restore', 'latest', device, '--host', 'dev1', '--disk', 'sdb', '--json'], env);
    t.is(r.code, 0, r.stderr);
    t.is(r.summary?.verified, true);
    t.notRegex(r.stderr, /warning/);
    const expected = kernelReadsTables ? [`${device}p1`, `${device}p2`] : [];
    t.deepEqual(r.summary?.partitions, expected);
    t.deepEqual(kernelPartitions(device), expected);
    if (kernelReadsTables) {
      t.true(
        (await readDevice(`${device}p2`, 0, 1024)).equals(disk.subarray(12288 * 512, 12288 * 512 + 1024)),
      );
    }

    // A person reading the summary is told the same.
    const text = await runCli(['restore', 'latest', device, '--host', 'dev1', '--disk', 'sdb'], env);
    t.is(text.code, 0, text.stderr);
    t.regex(
      text.stdout,
      kernelReadsTables
        ? new RegExp(`partition table re-read: ${device}p1, ${device}p2\n`)
        : /partition table re-read: the kernel shows no partitions\n/,
    );

    // Without blockdev (util-linux) the restore still succeeds, and says what to run.
    const noTool = await runCli(['restore', 'latest', device, '--host', 'dev1', '--disk', 'sdb', '--json'], {
      ...env,
      PATH: '/usr/bin:/bin',
    });
    t.is(noTool.code, 0, noTool.stderr);
    t.is(noTool.summary?.verified, true);
    t.is(noTool.summary?.partitions, undefined);
    t.regex(
      noTool.stderr,
      new RegExp(`warning: blockdev \\(util-linux\\) is not installed: run 'partprobe ${device}'`),
    );
  },
);

loopTest(loopTitle('a device smaller than the image is refused before anything is written'), async (t) => {
  const device = await loopDevice('small.dev', 8 * MiB, 0x5a);
  const r = await restore(device);
  t.is(r.code, 1);
  t.regex(r.stderr, new RegExp(`${device} holds ${8 * MiB} bytes, the snapshot needs ${image.length}`));
  t.notRegex(r.stderr, /\n\s+at /, 'no stack trace');
  t.true((await readDevice(device, 0, 8 * MiB)).equals(Buffer.alloc(8 * MiB, 0x5a)));
});

loopTest(loopTitle('a mounted device is refused, and its filesystem is left intact'), async (t) => {
  const device = await loopDevice('mounted.dev', 32 * MiB, 0);
  execFileSync('mkfs.ext4', ['-q', '-F', device]);
  const mountpoint = join(dir, 'mnt');
  await mkdir(mountpoint);
  execFileSync('mount', [device, mountpoint]);
  let mounted = true;
  try {
    await writeFile(join(mountpoint, 'hello.txt'), 'still here\n');
    execFileSync('sync');
    for (const extra of [[], ['--in-place']]) {
      const r = await restore(device, ...extra);
      t.is(r.code, 1, `${extra.join(' ')}: ${r.stdout}`);
      t.regex(r.stderr, new RegExp(`${device} is in use \\(mounted`));
      t.notRegex(r.stderr, /\n\s+at /, 'no stack trace');
    }
    execFileSync('umount', [mountpoint]);
    mounted = false;
    // -n: check only; exit 0 means clean.
    execFileSync('e2fsck', ['-fn', device], { stdio: 'ignore' });
    t.is(
      execFileSync('debugfs', ['-R', 'cat /hello.txt', device], {
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'ignore'],
      }),
      'still here\n',
    );
  } finally {
    if (mounted) execFileSync('umount', [mountpoint]);
  }
});
