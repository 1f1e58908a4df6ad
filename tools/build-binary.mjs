#!/usr/bin/env node
// Builds dist/diskvault-linux-x64: one executable holding Node.js, the diskvault CLI bundled by esbuild, and
// the native pieces (zstd-napi's and better-sqlite3's addons, fastcdc's WebAssembly) plus the worker threads'
// scripts as single-executable-application assets. At start the binary writes those assets into a private
// temp folder (mode 0700, removed at exit) and loads them from there: an addon can only be dlopen()ed from a
// file, and a worker thread only started from one. Run it after `npm run build` (npm run build:binary does
// both). Uses Node's SEA support (node --experimental-sea-config) and postject, as the Node docs describe.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  copyFileSync,
  mkdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = join(root, 'dist');
const work = join(dist, 'sea');
const output = join(dist, 'diskvault-linux-x64');
const started = Date.now();

if (process.platform !== 'linux' || process.arch !== 'x64') {
  console.error(`build-binary: builds only on linux x64 (this is ${process.platform} ${process.arch})`);
  process.exit(1);
}
if (!statSync(join(dist, 'agent', 'cli.js'), { throwIfNoEntry: false })) {
  console.error('build-binary: dist/agent/cli.js is missing: run `npm run build` first');
  process.exit(1);
}

/**
 * Worker threads' scripts, by their path in the checkout: unpacked at the same path under the temp folder,
 * which stands for the checkout's root, `new URL('./x.js', import.meta.url)` finds them there.
 */
const WORKERS = [
  'dist/agent/restore/decode-worker.js',
  'dist/agent/restore/image-hash-worker.js',
  'dist/agent/restore/target-scan-worker.js',
  'dist/agent/backup/worker.js',
];
/** Native files, by asset name: where they come from. */
const NATIVE = {
  'zstd-napi.node': 'node_modules/zstd-napi/build/Release/binding.node',
  'better_sqlite3.node': 'node_modules/better-sqlite3/build/Release/better_sqlite3.node',
  'fastcdc_wasm_bg.wasm': 'node_modules/fastcdc-wasm/fastcdc_wasm_bg.wasm',
};
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));

/**
 * Runs first in the main script and in every worker script. The main thread unpacks the assets into a
 * fresh private folder and names it in DISKVAULT_SEA_DIR (workers inherit the environment); a worker only
 * reads the variable. __dvNative loads an addon from there, __dvMetaUrl stands in for import.meta.url.
 */
const banner = `
var __dvSeaDir = (() => {
  const { isMainThread } = require('node:worker_threads');
  const path = require('node:path');
  if (!isMainThread) return process.env.DISKVAULT_SEA_DIR;
  const fs = require('node:fs');
  const sea = require('node:sea');
  const dir = fs.mkdtempSync(path.join(require('node:os').tmpdir(), 'diskvault-'));
  fs.chmodSync(dir, 0o700);
  process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    // Only when nothing else handles the signal: the commands' own handlers keep their meaning.
    process.once(signal, () => {
      if (process.listenerCount(signal) === 0) {
        fs.rmSync(dir, { recursive: true, force: true });
        process.kill(process.pid, signal);
      }
    });
  }
  for (const name of ${JSON.stringify([...Object.keys(NATIVE), 'package.json', ...WORKERS])}) {
    const file = path.join(dir, name);
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    fs.writeFileSync(file, new Uint8Array(sea.getRawAsset(name)), { mode: 0o600 });
  }
  process.env.DISKVAULT_SEA_DIR = dir;
  return dir;
})();
function __dvNative(name) {
  const m = { exports: {} };
  process.dlopen(m, require('node:path').join(__dvSeaDir, name));
  return m.exports;
}
function __dvMetaUrl(rel) {
  return require('node:url').pathToFileURL(require('node:path').join(__dvSeaDir, rel)).href;
}
`;

/** Replaces what cannot work from inside one file: computed requires of addons, __dirname, import.meta.url. */
const seaPlugin = {
  name: 'diskvault-sea',
  setup(build) {
    build.onLoad({ filter: /node_modules[\\/]zstd-napi[\\/]binding\.js$/ }, () => ({
      contents: `module.exports = __dvNative('zstd-napi.node');`,
      loader: 'js',
    }));
    build.onResolve({ filter: /^bindings$/ }, () => ({ path: 'bindings', namespace: 'dv-shim' }));
    build.onLoad({ filter: /^bindings$/, namespace: 'dv-shim' }, () => ({
      contents: `module.exports = (name) => __dvNative(name);`,
      loader: 'js',
    }));
    // restify's optional DTrace probes: restify goes on without them when dtrace-provider fails to load.
    build.onResolve({ filter: /^dtrace-provider$/ }, () => ({ path: 'dtrace', namespace: 'dv-shim' }));
    build.onLoad({ filter: /^dtrace$/, namespace: 'dv-shim' }, () => ({
      contents: `throw new Error('no DTrace in the single-file binary');`,
      loader: 'js',
    }));
    build.onLoad({ filter: /node_modules[\\/]fastcdc-wasm[\\/]fastcdc_wasm\.js$/ }, (args) => {
      const text = readFileSync(args.path, 'utf8');
      const from = "require('path').join(__dirname, 'fastcdc_wasm_bg.wasm')";
      if (!text.includes(from))
        throw new Error('fastcdc-wasm changed: its .wasm is no longer loaded as expected');
      return {
        contents: text.replace(from, "require('path').join(__dvSeaDir, 'fastcdc_wasm_bg.wasm')"),
        loader: 'js',
      };
    });
    build.onLoad({ filter: /[\\/]dist[\\/].*\.js$/ }, (args) => {
      let text = readFileSync(args.path, 'utf8');
      const rel = relative(root, args.path).split('\\').join('/');
      if (rel === 'dist/agent/cli.js') {
        // The dispatcher imports commands by a computed name: give esbuild every name literally.
        const from = 'await import(command.module)';
        if (!text.includes(from))
          throw new Error('agent/cli.js changed: its command import is not as expected');
        const table = [...text.matchAll(/module: '([^']+)'/g)].map((m) => m[1]);
        const cases = [...new Set(table)].map(
          (m) => `${JSON.stringify(m)}: () => import(${JSON.stringify(m)})`,
        );
        text = text.replace(from, `await ({ ${cases.join(', ')} })[command.module]()`);
      }
      return {
        contents: text.replaceAll('import.meta.url', `__dvMetaUrl(${JSON.stringify(rel)})`),
        loader: 'js',
      };
    });
  },
};

rmSync(work, { recursive: true, force: true });
mkdirSync(work, { recursive: true });
const common = {
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'cjs',
  banner: { js: banner },
  plugins: [seaPlugin],
  logLevel: 'warning',
  legalComments: 'none',
};
await esbuild.build({
  ...common,
  entryPoints: [join(dist, 'agent', 'cli.js')],
  outfile: join(work, 'main.cjs'),
});
const assets = {};
for (const w of WORKERS) {
  const out = join(work, w);
  // ES modules (a worker may await at its top level), with a require for the bundled CommonJS packages.
  await esbuild.build({
    ...common,
    format: 'esm',
    banner: {
      js: `import { createRequire as __dvCreateRequire } from 'node:module';\nconst require = __dvCreateRequire(import.meta.url);\n${banner}`,
    },
    entryPoints: [join(root, w)],
    outfile: out,
  });
  assets[w] = out;
}
for (const [name, from] of Object.entries(NATIVE)) assets[name] = join(root, from);
// What api/version.ts reads; "module" also makes the extracted worker scripts load as the ES modules they are.
const pkgFile = join(work, 'package.json');
writeFileSync(pkgFile, `${JSON.stringify({ name: pkg.name, version: pkg.version, type: 'module' })}\n`);
assets['package.json'] = pkgFile;

const config = join(work, 'sea-config.json');
const blob = join(work, 'sea-prep.blob');
writeFileSync(
  config,
  JSON.stringify({ main: join(work, 'main.cjs'), output: blob, disableExperimentalSEAWarning: true, assets }),
);
execFileSync(process.execPath, ['--experimental-sea-config', config], { stdio: 'inherit' });
// Built beside the output and renamed over it: a reader sees the old binary or the new one, never half.
const building = `${output}.tmp-${process.pid}`;
rmSync(building, { force: true });
copyFileSync(process.execPath, building);
chmodSync(building, 0o755);
execFileSync(
  process.execPath,
  [
    join(root, 'node_modules', 'postject', 'dist', 'cli.js'),
    building,
    'NODE_SEA_BLOB',
    blob,
    '--sentinel-fuse',
    'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2',
  ],
  { stdio: ['ignore', 'ignore', 'inherit'] },
);
renameSync(building, output);
const bytes = readFileSync(output);
const sha = createHash('sha256').update(bytes).digest('hex');
writeFileSync(`${output}.sha256`, `${sha}  diskvault-linux-x64\n`);
console.log(
  `built ${relative(root, output)}: ${bytes.length} bytes, sha256 ${sha}, in ${((Date.now() - started) / 1000).toFixed(1)} s`,
);
