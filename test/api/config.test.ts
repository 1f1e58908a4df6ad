import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { parseServerArgs } from '../../api/config.js';
import { parseListen, parseSize } from '../../common/units.js';

test('sizes accept plain bytes and binary suffixes', (t) => {
  t.is(parseSize('1024'), 1024);
  t.is(parseSize('256M'), 256 * 1024 ** 2);
  t.is(parseSize('1G'), 1024 ** 3);
  t.is(parseSize('512MiB'), 512 * 1024 ** 2);
  t.throws(() => parseSize('-1'));
  t.throws(() => parseSize('ten'));
});

test('listen addresses parse host, port and bracketed IPv6', (t) => {
  t.deepEqual(parseListen('0.0.0.0:9000'), { host: '0.0.0.0', port: 9000 });
  t.deepEqual(parseListen('[::1]:0'), { host: '::1', port: 0 });
  t.throws(() => parseListen('localhost'));
  t.throws(() => parseListen('h:70000'));
});

test('--no-streams (or "no-streams": true in the config file) turns the upload and fetch streams off', async (t) => {
  const flag = parseServerArgs(['--no-streams']);
  if (flag.help) return t.fail();
  t.is(flag.config.streams, false);
  const none = parseServerArgs([]);
  if (none.help) return t.fail();
  t.is(none.config.streams, undefined);
  const dir = await mkdtemp(path.join(os.tmpdir(), 'dv-cfg-'));
  try {
    const file = path.join(dir, 'server.json');
    await writeFile(file, JSON.stringify({ 'no-streams': true }));
    const r = parseServerArgs(['--config', file]);
    if (r.help) return t.fail();
    t.is(r.config.streams, false);
    await writeFile(file, JSON.stringify({ 'no-streams': 'yes' }));
    t.throws(() => parseServerArgs(['--config', file]), { message: /no-streams must be a boolean/ });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('no flags means 127.0.0.1:8420 and ./diskvault-data; a config file fills what flags leave out', async (t) => {
  const r = parseServerArgs([]);
  if (r.help) return t.fail();
  t.is(r.config.host, '127.0.0.1');
  t.is(r.config.port, 8420);
  t.is(r.config.dataDir, path.resolve('diskvault-data'));
  const dir = await mkdtemp(path.join(os.tmpdir(), 'dv-cfg-'));
  try {
    const file = path.join(dir, 'server.json');
    await writeFile(
      file,
      JSON.stringify({
        listen: '127.0.0.1:9999',
        'gc-grace': '2d',
        's3-bucket': 'b',
        's3-path-style': true,
        'cache-size': '1G',
      }),
    );
    const c = parseServerArgs(['--config', file, '--listen', '127.0.0.1:1234', '--session-lease', '30m']);
    if (c.help) return t.fail();
    t.is(c.config.port, 1234);
    t.is(c.config.gcGraceMs, 2 * 86_400_000);
    t.is(c.config.sessionLeaseMs, 30 * 60_000);
    t.is(c.config.cacheBytes, 1024 ** 3);
    t.deepEqual(c.config.s3?.bucket, 'b');
    t.true(c.config.s3?.forcePathStyle);
    await writeFile(file, JSON.stringify({ 'no-such-key': 1 }));
    t.throws(() => parseServerArgs(['--config', file]), { message: /unknown key/ });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
