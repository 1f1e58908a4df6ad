import { readFile, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { openContainer } from '../../agent/formats/index.js';
import { openSource } from '../../agent/sources/open.js';
import { runCli } from '../helpers/backup-e2e.js';
import { startTestServer, TEST_CHUNKER, type TestServer } from '../helpers/server.js';
import { patch, qemuImg, readWhole, tempDir } from './support/images.js';
import { writeDifferencingVhd } from './support/vhd-differencing.js';

/**
 * A raw VM disk is the guest's: it writes its first and last sectors. When the user gives no --format, a
 * container header the guest wrote there must not make the backup open a host file (qemu's CVE-2008-2004)
 * nor cut the disk short. With --format given, the image is read as it says.
 */
const MiB = 1024 * 1024;
const SECRET = 'host secret: not the guest disk';

let server: TestServer;
let env: Record<string, string>;

test.before(async () => {
  server = await startTestServer({ storage: 'local', chunker: TEST_CHUNKER });
  env = { DISKVAULT_SERVER: server.url, DISKVAULT_TOKEN: server.adminToken };
});
test.after.always(async () => {
  await server?.stop();
});

/** A raw 4 MiB guest disk whose first sectors are a qcow2 header naming a host file as its backing file. */
async function guestWithQcow2Header(dir: string): Promise<{ disk: string; hostFile: string }> {
  const hostFile = join(dir, 'host-secret.raw');
  const secret = Buffer.alloc(MiB);
  secret.write(SECRET, 0, 'latin1');
  await writeFile(hostFile, secret);
  const disk = join(dir, 'guest.raw');
  await qemuImg('create', '-f', 'qcow2', '-b', hostFile, '-F', 'raw', disk, '1M');
  await truncate(disk, 4 * MiB);
  return { disk, hostFile };
}

async function refusedDetected(
  t: ExecutionContext,
  path: string,
  format: string,
  why: RegExp,
): Promise<void> {
  for (const opening of [openContainer(path), openSource(path)]) {
    const err = await t.throwsAsync(opening);
    t.is((err as { code?: string }).code, 'InvalidInput', err?.message);
    t.regex(err?.message ?? '', why);
    t.regex(err?.message ?? '', new RegExp(`pass --format ${format} if it really is a ${format} image`));
    t.false((err?.message ?? '').includes('\n'), 'one line');
  }
}

test('a raw disk starting with a qcow2 header that names a backing file is refused unless --format qcow2', async (t) => {
  const dir = tempDir(t);
  const { disk } = await guestWithQcow2Header(dir);
  await refusedDetected(t, disk, 'qcow2', /qcow2 header names a backing file/);
  // --format raw backs up the guest's disk as it is; --format qcow2 is the user's word: the chain is read.
  const raw = await openSource(disk, { format: 'raw' });
  t.is(raw.size, 4 * MiB);
  t.false((await readWhole(raw)).includes(SECRET));
  await raw.close();
  const given = await openSource(disk, { format: 'qcow2' });
  t.is(given.format, 'qcow2');
  t.true((await readWhole(given)).includes(SECRET));
  await given.close();
});

test('diskvault backup of such a disk fails with a one-line error and stores nothing of the host file', async (t) => {
  const dir = tempDir(t);
  const { disk } = await guestWithQcow2Header(dir);
  const refused = await runCli(['backup', disk, '--host', 'guest', '--disk', 'vda', '--json'], env);
  t.not(refused.code, 0);
  t.regex(refused.stderr, /pass --format qcow2 if it really is a qcow2 image/);
  t.is(refused.summary, undefined);
  const raw = await runCli(
    ['backup', disk, '--host', 'guest', '--disk', 'vda', '--format', 'raw', '--json'],
    env,
  );
  t.is(raw.code, 0, raw.stderr);
  t.is(raw.summary?.size, 4 * MiB);
  t.is(raw.summary?.sourceFormat, 'raw');
});

test('a fixed VHD footer in the last sector of a raw disk is believed only when it describes the whole file', async (t) => {
  const dir = tempDir(t);
  await qemuImg('create', '-f', 'vpc', '-o', 'subformat=fixed', join(dir, 'small.vhd'), '1M');
  const small = await readFile(join(dir, 'small.vhd'));
  const footer = small.subarray(small.length - 512);
  // The guest of an 8 MiB raw disk writes a 1 MiB fixed VHD's footer into its last sector.
  const disk = join(dir, 'guest.raw');
  await writeFile(disk, Buffer.alloc(8 * MiB, 0x5a));
  await patch(disk, 8 * MiB - 512, footer);
  await refusedDetected(t, disk, 'vhd', /fixed VHD footer declaring \d+ bytes, not the 8388096 before it/);
  const given = await openContainer(disk, 'vhd');
  t.is(given?.size, small.length - 512, '--format vhd: the footer is believed');
  await given?.close();
  // A real fixed VHD (virtual size + 512 = file size) is still detected.
  const real = await openContainer(join(dir, 'small.vhd'));
  t.is(real?.format, 'vhd');
  t.is(real?.size, small.length - 512);
  await real?.close();
  // The same footer at the start of a disk (where only dynamic disks keep a copy) is not believed either.
  const atStart = join(dir, 'start.raw');
  await writeFile(atStart, Buffer.alloc(8 * MiB, 0x5a));
  await patch(atStart, 0, footer);
  await refusedDetected(t, atStart, 'vhd', /starts with a fixed VHD footer/);
});

test('a dynamic VHD footer only in the last sector, and a differencing VHD, are refused unless --format vhd', async (t) => {
  const dir = tempDir(t);
  await qemuImg('create', '-f', 'vpc', '-o', 'subformat=dynamic', join(dir, 'dyn.vhd'), '4M');
  const dyn = await readFile(join(dir, 'dyn.vhd'));
  const tailOnly = join(dir, 'tail-only.vhd');
  await writeFile(tailOnly, dyn);
  await patch(tailOnly, 0, Buffer.alloc(512)); // no footer copy at the start: only the last sector says VHD
  await refusedDetected(t, tailOnly, 'vhd', /dynamic VHD footer, without the copy/);
  const whole = await openContainer(join(dir, 'dyn.vhd'));
  const given = await openContainer(tailOnly, 'vhd');
  t.is(given?.size, whole?.size, '--format vhd: read as the intact image reads');
  await given?.close();
  await whole?.close();

  await writeFile(join(dir, 'parent.raw'), Buffer.alloc(4 * MiB, 0x11));
  await writeDifferencingVhd(join(dir, 'child.vhd'), 4 * MiB, 'parent.raw', []);
  await refusedDetected(t, join(dir, 'child.vhd'), 'vhd', /differencing VHD, which opens a parent file/);
});

test('a VMDK descriptor naming extent files is refused unless --format vmdk', async (t) => {
  const dir = tempDir(t);
  const extent = join(dir, 'host-secret.raw');
  const secret = Buffer.alloc(MiB);
  secret.write(SECRET, 0, 'latin1');
  await writeFile(extent, secret);
  const descriptor = join(dir, 'guest.raw');
  await writeFile(
    descriptor,
    `# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\nRW 2048 FLAT "${extent}" 0\n`,
  );
  await refusedDetected(t, descriptor, 'vmdk', /VMDK descriptor naming extent files/);
  const given = await openContainer(descriptor, 'vmdk');
  t.is(given?.size, MiB);
  await given?.close();
});
