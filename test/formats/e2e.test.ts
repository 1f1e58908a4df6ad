import { join } from 'node:path';
import test from 'ava';
import { runCli, sha256File } from '../helpers/backup-e2e.js';
import { startTestServer, TEST_CHUNKER, type TestServer } from '../helpers/server.js';
import { baseImage, qemuImg, qemuRaw, tempDir } from './support/images.js';

/**
 * Containers through the whole product: the real server, `diskvault backup` of the container file, and
 * `diskvault restore` — raw, and back into qcow2.
 */
let server: TestServer;
let env: Record<string, string>;

test.before(async () => {
  server = await startTestServer({ storage: 'local', chunker: TEST_CHUNKER });
  env = { DISKVAULT_SERVER: server.url, DISKVAULT_TOKEN: server.adminToken };
});
test.after.always(async () => {
  await server?.stop();
});

const CONTAINERS: { name: string; qemu: string; options: string[]; format: string }[] = [
  { name: 'qcow2', qemu: 'qcow2', options: ['-o', 'compat=1.1'], format: 'qcow2' },
  { name: 'qcow2-compressed', qemu: 'qcow2', options: ['-c'], format: 'qcow2' },
  { name: 'vhd-dynamic', qemu: 'vpc', options: ['-o', 'subformat=dynamic'], format: 'vhd' },
  { name: 'vmdk-sparse', qemu: 'vmdk', options: ['-o', 'subformat=monolithicSparse'], format: 'vmdk' },
  { name: 'vdi-dynamic', qemu: 'vdi', options: [], format: 'vdi' },
];

test.serial(
  'a raw disk and the same disk in each container share at least 99% of their chunks, and restore to what qemu reads',
  async (t) => {
    const dir = tempDir(t);
    const raw = await baseImage();
    const first = await runCli(['backup', raw, '--host', 'raw-host', '--disk', 'vda', '--json'], env);
    t.is(first.code, 0, first.stderr);

    for (const c of CONTAINERS) {
      const container = join(dir, `${c.name}.img`);
      await qemuImg('convert', '-f', 'raw', '-O', c.qemu, ...c.options, raw, container);
      const backup = await runCli(
        ['backup', container, '--host', `${c.name}-host`, '--disk', 'vda', '--json'],
        env,
      );
      t.is(backup.code, 0, `${c.name}: ${backup.stderr}`);
      const s = backup.summary!;
      t.is(s.sourceFormat, c.format, c.name);
      t.true(s.newChunks / s.chunks <= 0.01, `${c.name}: ${s.newChunks} of ${s.chunks} chunks were new`);

      const out = join(dir, `${c.name}.restored.raw`);
      const restore = await runCli(['restore', s.snapshot, out, '--json'], env);
      t.is(restore.code, 0, `${c.name}: ${restore.stderr}`);
      const reference = await qemuRaw(container, c.qemu, dir);
      t.is(
        await sha256File(out),
        await sha256File(reference),
        `${c.name}: restored raw differs from qemu-img convert -O raw`,
      );
    }
  },
);

test.serial(
  'restore --format qcow2 writes an image qemu-img check accepts and that converts back to the exact disk',
  async (t) => {
    const dir = tempDir(t);
    const raw = await baseImage();
    const backup = await runCli(['backup', raw, '--host', 'qcow2-out', '--disk', 'vda', '--json'], env);
    t.is(backup.code, 0, backup.stderr);
    const out = join(dir, 'restored.qcow2');
    const restore = await runCli(
      ['restore', backup.summary!.snapshot, out, '--format', 'qcow2', '--json'],
      env,
    );
    t.is(restore.code, 0, restore.stderr);
    await t.notThrowsAsync(qemuImg('check', '-f', 'qcow2', out));
    const back = await qemuRaw(out, 'qcow2', dir);
    t.is(await sha256File(back), await sha256File(raw));
  },
);

test.serial(
  'restore --format qcow2 refuses --in-place and stdout with a usage message, not a stack trace',
  async (t) => {
    const raw = await baseImage();
    const backup = await runCli(['backup', raw, '--host', 'qcow2-refuse', '--disk', 'vda', '--json'], env);
    t.is(backup.code, 0, backup.stderr);
    for (const args of [
      ['-', '--format', 'qcow2'],
      [join(tempDir(t), 'x.qcow2'), '--format', 'qcow2', '--in-place'],
    ]) {
      const r = await runCli(['restore', backup.summary!.snapshot, ...args], env);
      t.not(r.code, 0);
      t.regex(r.stderr, /qcow2/);
      t.notRegex(r.stderr, /\n\s+at /);
    }
  },
);
