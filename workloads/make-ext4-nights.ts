// `node dist/workloads/make-ext4-nights.js OUTDIR [NIGHTS] [SIZE] [SEED]`: writes OUTDIR/night0.img …
// night<NIGHTS>.img, the generated ext4 workload (defaults: 3 nights, 2G, seed 1). See ext4-nights.ts.
import { buildExt4Nights, parseSize } from './ext4-nights.js';

const [out, nights = '3', size = '2G', seed = '1'] = process.argv.slice(2);
if (!out || !/^\d+$/.test(nights) || !/^\d+$/.test(seed)) {
  process.stderr.write('usage: make-ext4-nights OUTDIR [NIGHTS] [SIZE] [SEED]\n');
  process.exit(2);
}
try {
  const images = await buildExt4Nights(out, {
    nights: Number(nights),
    size: parseSize(size),
    seed: Number(seed),
  });
  process.stdout.write(`${images.join('\n')}\n`);
} catch (err) {
  process.stderr.write(`make-ext4-nights: ${(err as Error).message}\n`);
  process.exit(1);
}
