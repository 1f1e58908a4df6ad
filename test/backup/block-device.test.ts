import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { splitDeviceNumber } from '../../agent/sources/block-device.js';
import { openSource } from '../../agent/sources/open.js';
import { attachLoop, canMakeLoopDevices, detachLoop } from '../helpers/loop-device.js';

test('device numbers split as glibc does, including majors and minors beyond 8 bits', (t) => {
  t.deepEqual(splitDeviceNumber(0x0700), { major: 7, minor: 0 }); // loop0
  t.deepEqual(splitDeviceNumber(0x0811), { major: 8, minor: 17 }); // sdb1
  t.deepEqual(splitDeviceNumber(0xfe00), { major: 254, minor: 0 }); // vda
  // major 259 (blkext, nvme partitions), minor 300: minor bits 8.. sit above bit 20
  const rdev = ((259 & 0xfff) << 8) | (300 & 0xff) | ((300 & ~0xff) << 12);
  t.deepEqual(splitDeviceNumber(rdev), { major: 259, minor: 300 });
});

(canMakeLoopDevices() ? test : test.skip)(
  'a block device is opened raw with its size and sector size from sysfs',
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
