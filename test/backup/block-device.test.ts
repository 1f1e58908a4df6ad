import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { splitDeviceNumber } from '../../agent/sources/block-device.js';
import { parseMountInfo } from '../../agent/sources/mounts.js';
import { openSource } from '../../agent/sources/open.js';
import { runCli } from '../helpers/backup-e2e.js';
import { attachLoop, canMakeLoopDevices, detachLoop, loopTitle } from '../helpers/loop-device.js';
import { startTestServer } from '../helpers/server.js';

test('device numbers split as glibc does, including majors and minors beyond 8 bits', (t) => {
  t.deepEqual(splitDeviceNumber(0x0700), { major: 7, minor: 0 }); // loop0
  t.deepEqual(splitDeviceNumber(0x0811), { major: 8, minor: 17 }); // sdb1
  t.deepEqual(splitDeviceNumber(0xfe00), { major: 254, minor: 0 }); // vda
  // major 259 (blkext, nvme partitions), minor 300: minor bits 8.. sit above bit 20
  const rdev = ((259 & 0xfff) << 8) | (300 & 0xff) | ((300 & ~0xff) << 12);
  t.deepEqual(splitDeviceNumber(rdev), { major: 259, minor: 300 });
});

(canMakeLoopDevices() ? test : test.skip)(
  loopTitle('a block device is opened raw with its size and sector size from sysfs'),
  async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'dv-blockdev-'));
    let loop = '';
    try {
      const file = join(dir, 'disk.img');
      const data = randomBytes(3 * 1024 * 1024);
      await writeFile(file, data);
      loop = attachLoop(file, { readOnly: true });
      const source = await openSource(loop);
      try {
        t.is(source.size, data.length);
        t.is(source.sectorSize, 512);
        t.is(source.format, 'raw');
        const buf = Buffer.alloc(data.length);
        t.is(await source.read(buf, 0), data.length);
        t.true(buf.equals(data));
      } finally {
        await source.close();
      }
      await t.throwsAsync(openSource(loop, { format: 'qcow2' }), { message: /block device/ });
    } finally {
      if (loop) detachLoop(loop);
      await rm(dir, { recursive: true, force: true });
    }
  },
);

test('mountinfo lines are matched by device number, with octal-escaped mount points and either ro flag', (t) => {
  const text = [
    '22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw',
    '40 22 7:0 / /mnt/with\\040space rw,noatime shared:2 - ext4 /dev/loop0 rw',
    '41 22 7:0 / /srv/ro-bind ro,relatime shared:3 - ext4 /dev/loop0 rw',
    '42 22 7:1 / /media/old rw,relatime shared:4 - ext4 /dev/loop1 ro,errors=remount-ro',
    '43 22 7:10 / /other rw shared:5 - ext4 /dev/loop10 rw',
    '',
  ].join('\n');
  t.deepEqual(parseMountInfo(text, 7, 0), [
    { mountPoint: '/mnt/with space', readOnly: false },
    { mountPoint: '/srv/ro-bind', readOnly: true },
  ]);
  t.deepEqual(parseMountInfo(text, 7, 1), [{ mountPoint: '/media/old', readOnly: true }]);
  t.deepEqual(parseMountInfo(text, 8, 0), []);
});

(canMakeLoopDevices() ? test : test.skip)(
  loopTitle(
    'a backup of a device mounted read-write warns, in words and in --json; mounted read-only, it does not',
  ),
  async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'dv-mounted-'));
    const server = await startTestServer();
    let loop = '';
    const mountpoint = join(dir, 'mnt');
    let mounted = false;
    try {
      const file = join(dir, 'fs.img');
      await writeFile(file, Buffer.alloc(16 * 1024 * 1024));
      loop = attachLoop(file);
      execFileSync('mkfs.ext4', ['-q', '-F', loop]);
      await mkdir(mountpoint);
      execFileSync('mount', [loop, mountpoint]);
      mounted = true;
      const env = {
        DISKVAULT_SERVER: server.url,
        DISKVAULT_TOKEN: await server.makeToken('agent', ['m1']),
        DISKVAULT_CONFIG: '/nonexistent/agent.json',
      };
      const args = ['backup', loop, '--host', 'm1', '--disk', 'sdb'];
      const human = await runCli(args, env);
      t.is(human.code, 0, human.stderr);
      t.true(
        human.stderr.includes(`diskvault backup: warning: ${loop} is mounted read-write at ${mountpoint}`),
        human.stderr,
      );
      t.regex(human.stdout, /WARNING {3}.* is mounted read-write/);
      const json = await runCli([...args, '--json'], env);
      t.is(json.code, 0, json.stderr);
      const warning = json.stderr
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l))
        .find((o) => o.type === 'warning');
      t.is(warning?.code, 'MountedReadWrite');
      t.deepEqual(
        (json.summary as { warnings?: { code: string }[] } | undefined)?.warnings?.map((w) => w.code),
        ['MountedReadWrite'],
      );

      execFileSync('mount', ['-o', 'remount,ro', mountpoint]);
      const readOnly = await runCli([...args, '--json'], env);
      t.is(readOnly.code, 0, readOnly.stderr);
      t.notRegex(readOnly.stderr, /warning/);
      t.deepEqual((readOnly.summary as { warnings?: unknown[] } | undefined)?.warnings, []);
    } finally {
      if (mounted) execFileSync('umount', [mountpoint]);
      if (loop) detachLoop(loop);
      await server.stop();
      await rm(dir, { recursive: true, force: true });
    }
  },
);
