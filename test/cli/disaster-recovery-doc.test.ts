import { spawn } from 'node:child_process';
import { mkdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { DISKVAULT } from '../helpers/diskvault-command.js';
import { execFileP, imageFixture } from '../helpers/image-fixture.js';
import { ensureBinary } from '../helpers/single-file-binary.js';

const DOC = fileURLToPath(new URL('../../../docs/disaster-recovery.md', import.meta.url));

/** The doc's shell blocks, each with the marker above it: `tested: NAME` or `not tested: why`. */
async function docBlocks(): Promise<{ blocks: Map<string, string>; unmarked: number; untested: number }> {
  const text = await readFile(DOC, 'utf8');
  const blocks = new Map<string, string>();
  let unmarked = 0;
  let untested = 0;
  for (const m of text.matchAll(
    /(?:<!-- (tested: ([a-z-]+)|not tested: [^>]+) -->\n)?```sh\n([\s\S]*?)```/g,
  )) {
    if (m[2]) blocks.set(m[2], m[3]);
    else if (m[1]) untested++;
    else unmarked++;
  }
  return { blocks, unmarked, untested };
}

function bash(
  script: string,
  cwd: string,
  env: Record<string, string>,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', ['-euo', 'pipefail', '-c', script], {
      cwd,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

test('docs/disaster-recovery.md: every command block it marks as tested restores the disk bit for bit', async (t) => {
  const { blocks, unmarked, untested } = await docBlocks();
  t.is(unmarked, 0, 'every shell block says whether the tests run it');
  t.is(untested, 1);
  t.deepEqual(
    [...blocks.keys()],
    [
      'find-snapshot',
      'image-headers',
      'share',
      'restore-curl',
      'restore-curl-link',
      'verify',
      'restore-qemu',
      'restore-binary',
      'vm-overlay',
    ],
  );
  await ensureBinary();
  const f = await imageFixture();
  t.teardown(() => f.close());
  // `diskvault` on the PATH, as on an admin's machine.
  const bin = join(f.dir, 'bin');
  await mkdir(bin);
  await symlink(DISKVAULT, join(bin, 'diskvault'));
  const work = join(f.dir, 'rescue');
  await mkdir(work);
  const disk = join(work, 'new-disk');
  const env: Record<string, string> = {
    PATH: `${bin}:${process.env.PATH}`,
    HOME: f.dir,
    DISKVAULT_SERVER: f.server.url,
    DISKVAULT_TOKEN: f.server.adminToken,
    SERVER: f.server.url,
    TOKEN: f.server.adminToken,
    HOST: f.host,
    DISKNAME: f.disk,
    SNAPSHOT: f.snapshot,
    DISK: disk,
  };
  const run = async (name: string) => {
    const r = await bash(blocks.get(name) as string, work, env);
    t.is(r.code, 0, `${name}: ${r.stderr}`);
    return r;
  };
  const restoresDisk = async (name: string) => {
    await rm(disk, { force: true });
    await run(name);
    t.true((await readFile(disk)).equals(f.image), name);
  };

  t.true((await run('find-snapshot')).stdout.includes(f.snapshot));
  t.regex((await run('image-headers')).stdout, new RegExp(`content-length: ${f.image.length}\\r\\n`, 'i'));
  env.URL = (await run('share')).stdout.trim();
  t.regex(env.URL, /\/v1\/share\/[0-9a-f]{16}_[0-9a-f]{64}\/image$/);
  await restoresDisk('restore-curl');
  t.regex((await run('verify')).stdout, /^verified: [0-9a-f]{64}\n$/);
  await restoresDisk('restore-curl-link');
  await restoresDisk('restore-qemu');
  await restoresDisk('restore-binary');
  await run('vm-overlay');
  // The overlay reads as the backed-up disk.
  await execFileP('qemu-img', [
    'compare',
    '-f',
    'qcow2',
    '-F',
    'raw',
    join(work, `${f.host}-overlay.qcow2`),
    f.source,
  ]);

  // And the verify block does catch a disk that differs.
  const bad = Buffer.from(f.image);
  bad[12345] ^= 1;
  await writeFile(disk, bad);
  t.is((await bash(blocks.get('verify') as string, work, env)).code, 1);
});
