import { execFile } from 'node:child_process';
import { type FileHandle, mkdir, mkdtemp, open, rm, utimes, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { gunzipSync } from 'node:zlib';
import {
  accessLog,
  binary,
  configFile,
  DB_PAGE,
  dbPage,
  gzipOf,
  media,
  prose,
  sourceCode,
  syslog,
  upgradeBinary,
  Vocabulary,
} from './content.js';
import { noise, Rng } from './random.js';

const run = promisify(execFile);

/** What to build: the image size, how many nights, and the seed everything derives from. */
export interface Ext4NightsOptions {
  /** Image size in bytes (a multiple of 4096). */
  size: number;
  /** Nights of changes after night0: night0.img … night<nights>.img. */
  nights: number;
  seed: number;
}

/** Parses an image size such as 256M, 2G, 8G or a byte count (IEC units, as numfmt --from=iec). */
export function parseSize(text: string): number {
  const m = /^(\d+)([KMGT]?)$/i.exec(text.trim());
  if (!m) throw new Error(`not a size: '${text}' (expected e.g. 256M, 2G)`);
  const shift = { '': 0, K: 10, M: 20, G: 30, T: 40 }[m[2].toUpperCase() as '' | 'K' | 'M' | 'G' | 'T'];
  return Number(m[1]) * 2 ** shift;
}

const BLOCK = 4096;
const DAY = 86_400_000;
/** Night n is taken at 02:00 UTC on 1 January 2026 plus n days. */
const EPOCH = Date.UTC(2026, 0, 1, 2, 0, 0);
const HOST = 'web1';
const LOG_ROTATIONS = 4;
const LANGUAGES = ['de', 'es', 'fr', 'it', 'ja', 'nl', 'pl', 'pt_BR', 'ru', 'sv', 'zh_CN'];

/** How a file's bytes are made; `make` is pure, so a file can be made again (an upgrade needs its old bytes). */
interface Recipe {
  kind: 'binary' | 'doc' | 'source' | 'config' | 'log' | 'media' | 'archive' | 'deb' | 'image' | 'db';
  make: () => Buffer;
}

type Tree = Map<string, Recipe>;

/** The state of the machine as the nights go by: its files and what is known about them. */
interface Machine {
  seed: number;
  vocab: Vocabulary;
  tree: Tree;
  /** The library of each package, the ones a night upgrades. */
  libraries: string[];
  dbPath: string;
  dbPages: number;
  /** Bytes of file data night0 holds; the nights' volumes are shares of it. */
  budget: number;
}

/**
 * Writes outDir/night0.img … night<nights>.img and returns their paths: a realistic disk-image workload.
 * night0 is an ext4 filesystem of a used Linux machine (packages with their libraries,
 * programs, documentation and Python modules; configuration; logs; a database; a user's photos, videos,
 * downloads and documents; an apt cache; a mostly empty container image), with old data in its free space
 * as a used disk has, then nights of the changes such a machine sees, applied to copies of the image in
 * place with debugfs: logs rotated and grown, packages upgraded (code inserted and removed, so content moves),
 * files deleted and added, a configuration edited, database pages rewritten where they lie.
 *
 * Everything is generated from `seed`: the same seed, size and e2fsprogs build give the same bytes.
 * Needs e2fsprogs (mke2fs, debugfs, e2fsck) and coreutils' cp.
 */
export async function buildExt4Nights(outDir: string, opts: Ext4NightsOptions): Promise<string[]> {
  if (opts.size % BLOCK !== 0 || opts.size < 16 * 2 ** 20) {
    throw new Error(`image size ${opts.size}: expected a multiple of 4096 of at least 16 MiB`);
  }
  await mkdir(outDir, { recursive: true });
  const work = await mkdtemp(join(outDir, '.work-'));
  try {
    const machine = planNight0(opts.seed, opts.size);
    const images = [join(outDir, 'night0.img')];
    await makeNight0(machine, images[0], opts.size, join(work, 'root'));
    for (let n = 1; n <= opts.nights; n++) {
      const image = join(outDir, `night${n}.img`);
      await run('cp', ['--sparse=always', images[n - 1], image]);
      await applyNight(machine, n, image, join(work, `night${n}`));
      images.push(image);
    }
    return images;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

function planNight0(seed: number, size: number): Machine {
  const vocab = new Vocabulary(seed);
  const rng = new Rng(seed, 'night0');
  const tree: Tree = new Map();
  // About half the disk is in use (files and the filesystem's own tables), as on a machine in service; a
  // large disk is not filled for the sake of it.
  const budget = Math.min(Math.floor(size * 0.4), 1100 * 2 ** 20);
  let used = 0;
  const add = (path: string, kind: Recipe['kind'], bytes: number, make: () => Buffer): void => {
    tree.set(path, { kind, make });
    used += bytes;
  };
  const upTo = (share: number, each: () => void): void => {
    const stop = used + budget * share;
    for (let tries = 0; used < stop && tries < 1_000_000; tries++) each();
  };

  // Packages: half the data, the part of a system disk that changes with upgrades.
  const libraries: string[] = [];
  const libSizes = new Map<string, number>();
  const packages = new Set<string>();
  upTo(0.5, () => {
    const pkg = vocab.words[rng.int(200, vocab.words.length - 1)];
    if (packages.has(pkg)) return;
    packages.add(pkg);
    const lib = `/usr/lib/x86_64-linux-gnu/lib${pkg}.so.${rng.int(0, 9)}`;
    const libSize = rng.logNormal(300_000, 1.1, 8192, 12 * 2 ** 20);
    add(lib, 'binary', libSize, () => binary(vocab, seed, lib, libSize));
    libraries.push(lib);
    libSizes.set(lib, libSize);
    if (rng.chance(0.5)) {
      const bin = `/usr/bin/${pkg}`;
      const binSize = rng.logNormal(120_000, 1.0, 8192, 4 * 2 ** 20);
      add(bin, 'binary', binSize, () => binary(vocab, seed, bin, binSize));
    }
    const docSize = rng.logNormal(6000, 1.0, 400, 200_000);
    add(`/usr/share/doc/${pkg}/copyright`, 'doc', docSize, () =>
      prose(vocab, new Rng(seed, `${pkg}/copyright`), docSize),
    );
    const logSize = rng.logNormal(40_000, 1.0, 1000, 2 * 2 ** 20);
    add(`/usr/share/doc/${pkg}/changelog.Debian.gz`, 'doc', logSize / 3, () =>
      gzipOf(prose(vocab, new Rng(seed, `${pkg}/changelog`), logSize)),
    );
    for (let i = rng.int(0, 8); i > 0; i--) {
      const path = `/usr/lib/python3/dist-packages/${pkg}/${vocab.word(rng)}_${i}.py`;
      const srcSize = rng.logNormal(12_000, 1.0, 200, 400_000);
      add(path, 'source', srcSize, () => sourceCode(vocab, new Rng(seed, path), srcSize));
    }
    for (let i = rng.int(0, 6); i > 0; i--) {
      const path = `/usr/include/${pkg}/${vocab.word(rng)}.h`;
      const srcSize = rng.logNormal(4000, 1.0, 100, 100_000);
      add(path, 'source', srcSize, () => sourceCode(vocab, new Rng(seed, path), srcSize));
    }
    for (const lang of rng.sample(LANGUAGES, rng.int(0, 4))) {
      const path = `/usr/share/locale/${lang}/LC_MESSAGES/${pkg}.mo`;
      const moSize = rng.logNormal(8000, 0.8, 500, 200_000);
      add(path, 'doc', moSize, () => prose(vocab, new Rng(seed, path), moSize));
    }
    if (rng.chance(0.3)) {
      const path = `/etc/${pkg}.conf`;
      const confSize = rng.logNormal(2000, 0.8, 100, 40_000);
      add(path, 'config', confSize, () => configFile(vocab, new Rng(seed, path), confSize));
    }
  });

  // Logs: today's syslog, yesterday's, older ones compressed by logrotate, a web server's access log.
  const logDay = Math.max(64 * 1024, Math.floor(budget * 0.015));
  add('/var/log/syslog', 'log', logDay, () => syslogOf(seed, vocab, 0, logDay));
  add('/var/log/syslog.1', 'log', logDay, () => syslogOf(seed, vocab, -1, logDay));
  for (let k = 2; k <= LOG_ROTATIONS; k++) {
    add(`/var/log/syslog.${k}.gz`, 'log', logDay / 8, () => gzipOf(syslogOf(seed, vocab, 1 - k, logDay)));
  }
  add('/var/log/nginx/access.log', 'log', logDay, () => accessLogOf(seed, vocab, 0, logDay));

  // A database: one table file of 8 KiB pages, rewritten in place on later nights.
  const dbPath = '/var/lib/postgresql/16/main/base/16384/24576';
  const dbPages = Math.max(64, Math.floor((budget * 0.08) / DB_PAGE));
  add(dbPath, 'db', dbPages * DB_PAGE, () => dbFile(seed, vocab, dbPages, () => 0));

  // A user's files: photos and videos (incompressible), downloads (compressed archives), documents.
  let photo = 1000;
  upTo(0.14, () => {
    const path = `/home/alice/Pictures/IMG_${photo++}.jpg`;
    const bytes = rng.logNormal(3 * 2 ** 20, 0.5, 200_000, 12 * 2 ** 20);
    add(path, 'media', bytes, () => media(seed, path, bytes));
  });
  upTo(0.04, () => {
    const path = `/home/alice/Videos/${vocab.word(rng)}-${photo++}.mp4`;
    const bytes = rng.logNormal(Math.min(12 * 2 ** 20, budget * 0.02), 0.6, 2 ** 20, 64 * 2 ** 20);
    add(path, 'media', bytes, () => media(seed, path, bytes));
  });
  upTo(0.05, () => downloadArchive(tree, seed, vocab, rng, (b) => (used += b)));
  upTo(0.02, () => {
    const path = `/home/alice/Documents/${vocab.word(rng)}-${rng.int(1, 999)}.txt`;
    const bytes = rng.logNormal(20_000, 1.2, 300, 2 * 2 ** 20);
    add(path, 'doc', bytes, () => prose(vocab, new Rng(seed, path), bytes));
  });
  // The apt cache: packages as downloaded (compressed, so incompressible).
  upTo(0.04, () => {
    const path = `/var/cache/apt/archives/${vocab.word(rng)}_${rng.int(1, 9)}.${rng.int(0, 30)}-${rng.int(1, 5)}_amd64.deb`;
    const bytes = rng.logNormal(400_000, 1.0, 4096, 20 * 2 ** 20);
    add(path, 'deb', bytes, () => noise(seed, path, bytes));
  });
  // A vendored application that ships its own copies of system libraries: the same bytes twice on one disk.
  upTo(0.04, () => {
    const lib = rng.pick(libraries);
    const path = `/opt/vendor/lib/${lib.slice(lib.lastIndexOf('/') + 1)}`;
    if (tree.has(path)) return;
    const original = tree.get(lib)!;
    add(path, 'binary', libSizes.get(lib)!, original.make);
  });
  // A container image that is mostly empty: zero blocks with islands of data.
  const imageSize = Math.max(2 ** 20, Math.floor((budget * 0.03) / 2 ** 20) * 2 ** 20);
  add('/var/lib/machines/build.raw', 'image', imageSize, () => sparseImage(seed, vocab, imageSize));
  return { seed, vocab, tree, libraries, dbPath, dbPages, budget };
}

function syslogOf(seed: number, vocab: Vocabulary, day: number, bytes: number): Buffer {
  return syslog(vocab, new Rng(seed, `syslog:${day}`), bytes, new Date(EPOCH + (day - 1) * DAY), HOST);
}

function accessLogOf(seed: number, vocab: Vocabulary, day: number, bytes: number): Buffer {
  return accessLog(vocab, new Rng(seed, `access:${day}`), bytes, new Date(EPOCH + (day - 1) * DAY));
}

function downloadArchive(
  tree: Tree,
  seed: number,
  vocab: Vocabulary,
  rng: Rng,
  count: (b: number) => void,
): void {
  const path = `/home/alice/Downloads/${vocab.word(rng)}-${rng.int(1, 9)}.${rng.int(0, 20)}.tar.gz`;
  const text = rng.logNormal(2 * 2 ** 20, 0.8, 50_000, 16 * 2 ** 20);
  tree.set(path, { kind: 'archive', make: () => gzipOf(sourceCode(vocab, new Rng(seed, path), text)) });
  count(text / 4);
}

/** The table file with each page at the version `versionOf` gives. */
function dbFile(seed: number, vocab: Vocabulary, pages: number, versionOf: (page: number) => number): Buffer {
  return Buffer.concat(Array.from({ length: pages }, (_, p) => dbPage(vocab, seed, p, versionOf(p))));
}

function sparseImage(seed: number, vocab: Vocabulary, size: number): Buffer {
  const out = Buffer.alloc(size);
  const rng = new Rng(seed, 'machine-image');
  for (let at = 0; at < size; at += 2 ** 20) {
    if (!rng.chance(0.3)) continue;
    const island = rng.chance(0.5)
      ? binary(vocab, seed, `machine-image:${at}`, 64 * 1024)
      : prose(vocab, rng, 64 * 1024);
    island.copy(out, at + rng.int(0, 15) * 64 * 1024);
  }
  return out;
}

/** Writes the old data, then mke2fs -d from a folder holding the tree, then pins every time stamp. */
async function makeNight0(machine: Machine, image: string, size: number, staging: string): Promise<void> {
  const dirs = new Set<string>(['/']);
  for (const [path, recipe] of machine.tree) {
    for (let d = dirname(path); d !== '/'; d = dirname(d)) dirs.add(d);
    await mkdir(join(staging, dirname(path)), { recursive: true });
    await writeFile(join(staging, path), recipe.make());
  }
  const night0 = new Date(EPOCH);
  for (const path of machine.tree.keys()) await utimes(join(staging, path), night0, night0);
  for (const d of dirs) await utimes(join(staging, d), night0, night0);

  const fh = await open(image, 'w');
  try {
    await fh.truncate(size);
    await writeOldData(fh, machine, size);
  } finally {
    await fh.close();
  }
  const uuid = uuidOf(machine.seed);
  await run(
    'mke2fs',
    [
      '-q',
      '-F',
      '-t',
      'ext4',
      '-b',
      String(BLOCK),
      '-U',
      uuid,
      '-E',
      `nodiscard,lazy_itable_init=1,hash_seed=${uuid}`,
      '-d',
      staging,
      image,
    ],
    { env: { ...process.env, E2FSPROGS_FAKE_TIME: String(EPOCH / 1000) } },
  );
  // mke2fs -d copies each file's change time from the staging folder, which is now: pin it.
  await debugfs(image, 0, [...[...dirs, ...machine.tree.keys()].map((p) => `sif ${p} ctime ${stamp(0)}`)]);
  await fsck(image);
}

/** A used disk is not zero where files were deleted: generated old files in what becomes free space. */
async function writeOldData(fh: FileHandle, machine: Machine, size: number): Promise<void> {
  const rng = new Rng(machine.seed, 'old-data');
  const start = Math.floor((size * 2) / 3 / 2 ** 20) * 2 ** 20;
  const length = Math.min(Math.floor(size / 8), 400 * 2 ** 20);
  for (let at = 0; at < length; at += 4 * 2 ** 20) {
    const piece = Math.min(4 * 2 ** 20, length - at);
    const r = rng.next();
    const data =
      r < 0.4
        ? prose(machine.vocab, rng, piece)
        : r < 0.7
          ? binary(machine.vocab, machine.seed, `old:${at}`, piece)
          : noise(machine.seed, `old:${at}`, piece);
    await fh.write(data, 0, piece, start + at);
  }
}

/** One night of changes on `image` (a copy of the night before). */
async function applyNight(machine: Machine, n: number, image: string, pool: string): Promise<void> {
  const { seed, vocab, tree, budget } = machine;
  const rng = new Rng(seed, `night${n}`);
  await mkdir(pool, { recursive: true });
  const cmds: string[] = [];
  const touched: string[] = [];
  let poolFiles = 0;
  const write = async (path: string, recipe: Recipe): Promise<void> => {
    const host = join(pool, String(poolFiles++));
    await writeFile(host, recipe.make());
    const when = new Date(EPOCH + n * DAY);
    await utimes(host, when, when);
    if (tree.has(path)) cmds.push(`rm ${path}`);
    cmds.push(`write ${host} ${path}`);
    tree.set(path, recipe);
    touched.push(path);
  };
  const mkdirs = (path: string): void => {
    const missing: string[] = [];
    for (
      let d = dirname(path);
      d !== '/' && ![...tree.keys()].some((p) => p.startsWith(`${d}/`));
      d = dirname(d)
    ) {
      missing.unshift(d);
    }
    for (const d of missing) cmds.push(`mkdir ${d}`);
  };
  const rename = (from: string, to: string): void => {
    cmds.push(`ln ${from} ${to}`, `unlink ${from}`);
    tree.set(to, tree.get(from)!);
    tree.delete(from);
  };
  const remove = (path: string): void => {
    cmds.push(`rm ${path}`);
    tree.delete(path);
  };

  // logrotate: the oldest goes, the others move down, yesterday's is compressed, today's starts.
  const logDay = Math.max(64 * 1024, Math.floor(budget * 0.015));
  remove(`/var/log/syslog.${LOG_ROTATIONS}.gz`);
  for (let k = LOG_ROTATIONS - 1; k >= 2; k--)
    rename(`/var/log/syslog.${k}.gz`, `/var/log/syslog.${k + 1}.gz`);
  const yesterday = n - 2;
  await write('/var/log/syslog.2.gz', {
    kind: 'log',
    make: () => gzipOf(syslogOf(seed, vocab, yesterday, logDay)),
  });
  remove('/var/log/syslog.1');
  rename('/var/log/syslog', '/var/log/syslog.1');
  await write('/var/log/syslog', { kind: 'log', make: () => syslogOf(seed, vocab, n, logDay) });
  // The access log grows by a day.
  const days = Array.from({ length: n + 1 }, (_, d) => d);
  await write('/var/log/nginx/access.log', {
    kind: 'log',
    make: () => Buffer.concat(days.map((d) => accessLogOf(seed, vocab, d, logDay))),
  });

  // Package upgrades: new builds of some libraries, their changelogs and the downloaded packages.
  const upgrades = rng.sample(machine.libraries, Math.max(2, Math.round(machine.libraries.length * 0.04)));
  for (const lib of upgrades) {
    const old = tree.get(lib)!;
    await write(lib, { kind: 'binary', make: () => upgradeBinary(old.make(), seed, `${lib}:${n}`) });
    const pkg = lib.slice(lib.lastIndexOf('/lib') + 4, lib.lastIndexOf('.so'));
    const changelog = `/usr/share/doc/${pkg}/changelog.Debian.gz`;
    const entry = prose(vocab, new Rng(seed, `${changelog}:${n}`), rng.int(300, 3000));
    const before = tree.get(changelog);
    if (before) {
      await write(changelog, {
        kind: 'doc',
        make: () => gzipOf(Buffer.concat([entry, gunzipSync(before.make())])),
      });
    }
    const deb = `/var/cache/apt/archives/${pkg}_${n}.0-1_amd64.deb`;
    const debSize = rng.logNormal(300_000, 0.8, 4096, 8 * 2 ** 20);
    await write(deb, { kind: 'deb', make: () => noise(seed, deb, debSize) });
  }
  // Cleaning up: some downloads and cached packages deleted.
  const deletable = [...tree.keys()].filter(
    (p) => p.startsWith('/home/alice/Downloads/') || p.endsWith('.deb'),
  );
  for (const path of rng.sample(deletable, Math.max(2, Math.round(deletable.length * 0.1)))) remove(path);
  // A configuration file edited: a few bytes of it changed.
  const configs = [...tree.entries()].filter(([, r]) => r.kind === 'config').map(([p]) => p);
  for (const path of rng.sample(configs, 2)) {
    const old = tree.get(path)!;
    const at = rng.next();
    await write(path, {
      kind: 'config',
      make: () => {
        const b = Buffer.from(old.make());
        b.write(`changed_on_night_${n} = yes\n`, Math.floor(at * Math.max(0, b.length - 40)), 'latin1');
        return b;
      },
    });
  }
  // New work of the day: documents, photos, a download.
  const dir = `/home/alice/Documents/night${n}`;
  for (let i = rng.int(4, 12); i > 0; i--) {
    const path = `${dir}/${vocab.word(rng)}-${i}.txt`;
    const bytes = rng.logNormal(30_000, 1.0, 500, 2 * 2 ** 20);
    mkdirs(path);
    await write(path, { kind: 'doc', make: () => prose(vocab, new Rng(seed, path), bytes) });
  }
  const photos = Math.max(1, Math.round((budget * 0.01) / (3 * 2 ** 20)));
  for (let i = 0; i < photos; i++) {
    const path = `/home/alice/Pictures/night${n}-IMG_${i}.jpg`;
    const bytes = rng.logNormal(3 * 2 ** 20, 0.4, 500_000, 8 * 2 ** 20);
    await write(path, { kind: 'media', make: () => media(seed, path, bytes) });
  }
  {
    const before = new Set(tree.keys());
    downloadArchive(tree, seed, vocab, rng, () => undefined);
    const [added] = [...tree.keys()].filter((p) => !before.has(p));
    if (added) {
      const recipe = tree.get(added)!;
      tree.delete(added);
      await write(added, recipe);
    }
  }

  // The database rewrites scattered pages where they lie (and its first pages, which every commit touches).
  const pages = new Set<number>([0, 1]);
  const rewrites = Math.max(4, Math.round(machine.dbPages * 0.02));
  while (pages.size < rewrites + 2) pages.add(rng.int(0, machine.dbPages - 1));
  await rewriteDbPages(machine, image, [...pages], n);
  cmds.push(`sif ${machine.dbPath} mtime ${stamp(n)}`, `sif ${machine.dbPath} ctime ${stamp(n)}`);
  for (const path of touched) if (tree.has(path)) cmds.push(`sif ${path} ctime ${stamp(n)}`);
  await debugfs(image, n, cmds);
  await fsck(image);
}

/** Writes the new versions of `pages` over the blocks the table file holds in `image`. */
async function rewriteDbPages(machine: Machine, image: string, pages: number[], n: number): Promise<void> {
  const { stdout } = await run('debugfs', ['-R', `blocks ${machine.dbPath}`, image], {
    maxBuffer: 64 * 2 ** 20,
  });
  const blocks = stdout.trim().split(/\s+/).map(Number);
  const perPage = DB_PAGE / BLOCK;
  if (blocks.length !== machine.dbPages * perPage) {
    throw new Error(`the table file has ${blocks.length} blocks, expected ${machine.dbPages * perPage}`);
  }
  const fh = await open(image, 'r+');
  try {
    for (const p of pages) {
      const data = dbPage(machine.vocab, machine.seed, p, n);
      for (let i = 0; i < perPage; i++) {
        await fh.write(data, i * BLOCK, BLOCK, blocks[p * perPage + i] * BLOCK);
      }
    }
  } finally {
    await fh.close();
  }
  const previous = machine.tree.get(machine.dbPath)!.make;
  const changed = new Set(pages);
  machine.tree.set(machine.dbPath, {
    kind: 'db',
    make: () => {
      const b = previous();
      for (const p of changed) dbPage(machine.vocab, machine.seed, p, n).copy(b, p * DB_PAGE);
      return b;
    },
  });
}

/** Runs debugfs commands on `image` at night n's time; any complaint from debugfs is an error. */
async function debugfs(image: string, n: number, cmds: string[]): Promise<void> {
  const script = [`set_current_time ${stamp(n)}`, ...cmds].join('\n');
  const dir = await mkdtemp(join(dirname(image), '.debugfs-'));
  try {
    const file = join(dir, 'cmds');
    await writeFile(file, `${script}\n`);
    const { stderr } = await run('debugfs', ['-w', '-f', file, image], { maxBuffer: 256 * 2 ** 20 });
    const complaints = stderr.split('\n').filter((l) => l.trim() !== '' && !/^debugfs \d/.test(l));
    if (complaints.length > 0) throw new Error(`debugfs on ${image}: ${complaints.slice(0, 5).join('; ')}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function fsck(image: string): Promise<void> {
  try {
    await run('e2fsck', ['-fn', image]);
  } catch (err) {
    const e = err as { stdout?: string };
    throw new Error(`${image} fails e2fsck -fn:\n${e.stdout ?? String(err)}`);
  }
}

/** Night n's time as debugfs takes it (YYYYMMDDhhmmss, UTC). */
function stamp(n: number): string {
  return new Date(EPOCH + n * DAY).toISOString().replace(/[-:T]/g, '').slice(0, 14);
}

function uuidOf(seed: number): string {
  const h = new Rng(seed, 'uuid');
  const hex = Array.from({ length: 4 }, () => h.nextU32().toString(16).padStart(8, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-4${hex.slice(13, 16)}-a${hex.slice(17, 20)}-${hex.slice(20, 32)}`;
}
