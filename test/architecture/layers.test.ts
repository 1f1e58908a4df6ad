import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';

/**
 * The layers, lowest first: a file may import its own layer and the ones below it, never one above.
 * common/ is the neutral layer under all of them and imports none; workloads/ (the test and benchmark
 * images) may use only common/; ui/ (the web console, browser code built on its own by
 * scripts/build-ui.mjs) talks to the server over HTTP only and imports none of ours.
 */
const LAYERS = ['common', 'storage-adapters', 'repo-engine', 'api', 'agent'];
const LEAVES: Record<string, string[]> = { workloads: ['common', 'workloads'], ui: ['ui'] };

/**
 * Folders outside the product, which may import anything: the tests, the benchmarks and the build scripts
 * (scripts/, tools/), plus what is not source at all.
 */
const OUTSIDE = ['test', 'bench', 'scripts', 'tools', 'docs', 'dist', 'node_modules'];

/** The checkout: dist/test/architecture/ is three levels below it. */
const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

const SOURCE = /\.(ts|mts|js|mjs)$/;

function sourcesUnder(dir: string): string[] {
  return readdirSync(join(root, dir), { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile() && SOURCE.test(e.name))
    .map((e) => relative(root, join(e.parentPath, e.name)));
}

/** Every module a file imports, re-exports or loads dynamically, as written. */
function specifiersOf(source: string): string[] {
  const found: string[] = [];
  for (const re of [/\bfrom\s+'([^']+)'/g, /\bimport\s*\(\s*'([^']+)'\s*\)/g, /^\s*import\s+'([^']+)'/gm]) {
    for (const m of source.matchAll(re)) found.push(m[1]);
  }
  return found;
}

function layerOf(file: string): string {
  return file.split(sep)[0];
}

function allowed(from: string): string[] {
  if (from in LEAVES) return LEAVES[from];
  return LAYERS.slice(0, LAYERS.indexOf(from) + 1);
}

/** `file -> target` for every import of a product file that points to a layer it may not use. */
function upwardImports(): string[] {
  const bad: string[] = [];
  for (const dir of [...LAYERS, ...Object.keys(LEAVES)]) {
    for (const file of sourcesUnder(dir)) {
      for (const spec of specifiersOf(readFileSync(join(root, file), 'utf8'))) {
        if (!spec.startsWith('.')) continue; // node: builtins and packages
        const target = relative(root, resolve(root, dirname(file), spec));
        const to = layerOf(target);
        if (!allowed(layerOf(file)).includes(to)) bad.push(`${file} -> ${target}`);
      }
    }
  }
  return bad.sort();
}

test('no product file imports from a layer above its own; common/ imports none of them', (t) => {
  t.deepEqual(upwardImports(), []);
});

test('every top-level folder is a layer, a leaf or outside the product, so a new one is not skipped unseen', (t) => {
  const known = new Set([...LAYERS, ...Object.keys(LEAVES), ...OUTSIDE]);
  const unplaced = readdirSync(root, { withFileTypes: true })
    .filter((e) => e.isDirectory() && !e.name.startsWith('.') && !known.has(e.name))
    .map((e) => e.name);
  t.deepEqual(unplaced, []);
});

test('the check sees every kind of import, so an upward one cannot hide', (t) => {
  const source = [
    "import { a } from '../api/x.js';",
    "import type { B } from '../agent/y.js';",
    "export { c } from '../repo-engine/z.js';",
    "const m = await import('../agent/lazy.js');",
    "import '../api/side-effect.js';",
  ].join('\n');
  t.deepEqual(specifiersOf(source), [
    '../api/x.js',
    '../agent/y.js',
    '../repo-engine/z.js',
    '../agent/lazy.js',
    '../api/side-effect.js',
  ]);
  t.deepEqual(allowed('common'), ['common']);
  t.deepEqual(allowed('repo-engine'), ['common', 'storage-adapters', 'repo-engine']);
  t.false(allowed('api').includes('agent'));
  t.deepEqual(allowed('ui'), ['ui']);
});
