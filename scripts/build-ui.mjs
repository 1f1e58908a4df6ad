// Builds the web console (ui/) into dist/ui: the TypeScript sources bundled with uPlot into one script, the
// page and the style sheets copied. The server serves dist/ui at /ui/; nothing is fetched from elsewhere.
import { copyFile, mkdir, rm } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = fileURLToPath(new URL('..', import.meta.url));
const out = `${root}dist/ui/`;

await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });
await build({
  entryPoints: [`${root}ui/src/main.ts`],
  bundle: true,
  format: 'esm',
  target: 'es2022',
  minify: true,
  sourcemap: true,
  outfile: `${out}app.js`,
  logLevel: 'warning',
});
await copyFile(`${root}ui/index.html`, `${out}index.html`);
await copyFile(`${root}ui/style.css`, `${out}style.css`);
await copyFile(`${root}ui/favicon.svg`, `${out}favicon.svg`);
await copyFile(`${root}node_modules/uplot/dist/uPlot.min.css`, `${out}uplot.css`);
