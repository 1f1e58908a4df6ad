import { chmod, mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { createToken } from '../../api/token-store.js';
import { backup, chunkOf } from '../helpers/api-client.js';
import { type SpawnedServer, spawnServer } from '../helpers/server.js';

// Everything the server writes is for its own user: files 0600, folders 0700, whatever the umask, and a
// data or storage folder made open by someone else (systemd's StateDirectory= without a mode) is closed at
// start with a warning.

/** Every file and folder under `root` with its permission bits, as 'relative/path 0600'. */
async function modes(root: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (dir: string) => {
    for (const e of await readdir(dir, { withFileTypes: true })) {
      const full = path.join(dir, e.name);
      const mode = ((await stat(full)).mode & 0o777).toString(8).padStart(4, '0');
      out.push(`${path.relative(root, full)} ${mode}`);
      if (e.isDirectory()) await walk(full);
    }
  };
  await walk(root);
  return out.sort();
}

/** The server started under umask 000, the most permissive an operator could leave it. */
async function spawnUnderUmask0(dataDir: string): Promise<SpawnedServer> {
  const old = process.umask(0);
  try {
    return await spawnServer({ dataDir });
  } finally {
    process.umask(old);
  }
}

const warnings = (srv: SpawnedServer) =>
  srv
    .output()
    .stderr.split('\n')
    .filter((l) => l.startsWith('{') && JSON.parse(l).level === 'warn')
    .map((l) => JSON.parse(l).msg as string);

test('under umask 000 and a 0755 data folder, every file the server writes is 0600 and every folder 0700', async (t) => {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'dv-modes-'));
  let srv: SpawnedServer | undefined;
  try {
    // What systemd's StateDirectory= makes without StateDirectoryMode=.
    await chmod(dataDir, 0o755);
    srv = await spawnUnderUmask0(dataDir);
    t.deepEqual(warnings(srv), [
      `data folder ${dataDir} was open to other users (mode 0755); set it to 0700 (in a systemd unit, StateDirectoryMode=0700 keeps it so)`,
    ]);
    t.is((await stat(dataDir)).mode & 0o777, 0o700);
    const { token } = await createToken(dataDir, { role: 'agent', hosts: ['h1'] });
    await backup(srv.url, token, 'h1', 'sda', [chunkOf('one'), chunkOf('two'), chunkOf('three')]);
    const all = await modes(dataDir);
    // The index with its WAL files, tokens, the admin token, the repository config, chunks, a manifest.
    for (const name of ['index.sqlite', 'index.sqlite-wal', 'index.sqlite-shm', 'tokens.json', 'admin.token'])
      t.true(all.includes(`${name} 0600`), `${name} in ${all.join(', ')}`);
    t.is(all.filter((l) => /^storage\/chunks\/.* 0600$/.test(l)).length, 3);
    t.is(all.filter((l) => /^storage\/snapshots\/[0-9a-f]{64} 0600$/.test(l)).length, 1);
    t.deepEqual(
      all.filter((l) => !l.endsWith(' 0600') && !l.endsWith(' 0700')),
      [],
    );
    t.is(await srv.kill('SIGTERM'), 0);

    // An existing storage folder opened up by hand is closed again at the next start, and named.
    await chmod(path.join(dataDir, 'storage'), 0o750);
    srv = await spawnUnderUmask0(dataDir);
    t.deepEqual(warnings(srv), [
      `storage folder ${path.join(dataDir, 'storage')} was open to other users (mode 0750); set it to 0700 (in a systemd unit, StateDirectoryMode=0700 keeps it so)`,
    ]);
    t.is((await stat(path.join(dataDir, 'storage'))).mode & 0o777, 0o700);
  } finally {
    await srv?.kill('SIGTERM');
    await rm(dataDir, { recursive: true, force: true });
  }
});
