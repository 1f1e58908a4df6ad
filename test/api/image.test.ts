import { randomBytes } from 'node:crypto';
import { readFile, rm, unlink, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import test from 'ava';
import { corruptStoredChunk, storedChunkFile } from '../helpers/backup-e2e.js';
import { curl, cuttingProxy, fileSize, imageFixture, sha256 } from '../helpers/image-fixture.js';
import { pollUntil } from '../helpers/poll.js';

const auth = (token: string) => ({ authorization: `Bearer ${token}` });

test('GET /v1/snapshots/:id/image streams the image bit for bit, with its length, ETag and SHA-256', async (t) => {
  const f = await imageFixture();
  t.teardown(() => f.close());
  const out = join(f.dir, 'curl.img');
  const got = await curl(['-f', '-o', out, '-H', `Authorization: Bearer ${f.server.adminToken}`, f.url]);
  t.is(got.code, 0, got.stderr);
  t.true((await readFile(out)).equals(f.image));

  const head = await fetch(f.url, { method: 'HEAD', headers: auth(f.server.adminToken) });
  t.is(head.status, 200);
  t.is(head.headers.get('content-length'), String(f.image.length));
  t.is(head.headers.get('accept-ranges'), 'bytes');
  t.is(head.headers.get('etag'), `"${sha256(f.image)}"`);
  t.is(head.headers.get('x-diskvault-image-sha256'), sha256(f.image));
  t.is(
    head.headers.get('repr-digest'),
    `sha-256=:${Buffer.from(sha256(f.image), 'hex').toString('base64')}:`,
  );
});

test('byte ranges of the image are bit-identical to the source; bad ranges get 416 or the whole image', async (t) => {
  const f = await imageFixture();
  t.teardown(() => f.close());
  const size = f.image.length;
  const get = (range: string, extra: Record<string, string> = {}) =>
    fetch(f.url, { headers: { ...auth(f.server.adminToken), range, ...extra } });
  // Inside one chunk, across many, the first and last byte, the zero run, the tail.
  const cases: [number, number][] = [
    [0, 0],
    [1, 100],
    [65_530, 70_000],
    [1_000_000, 4_500_000],
    [3 * 1024 * 1024, 5 * 1024 * 1024 + 17],
    [size - 1, size - 1],
    [size - 300_000, size - 1],
  ];
  for (let n = 0; n < 12; n++) {
    const a = Math.floor(Math.random() * size);
    cases.push([a, Math.min(size - 1, a + Math.floor(Math.random() * 2_000_000))]);
  }
  for (const [a, b] of cases) {
    const res = await get(`bytes=${a}-${b}`);
    t.is(res.status, 206, `bytes=${a}-${b}`);
    t.is(res.headers.get('content-range'), `bytes ${a}-${b}/${size}`);
    t.is(res.headers.get('content-length'), String(b - a + 1));
    t.true(Buffer.from(await res.arrayBuffer()).equals(f.image.subarray(a, b + 1)), `bytes=${a}-${b}`);
  }
  const suffix = await get('bytes=-1000');
  t.is(suffix.status, 206);
  t.true(Buffer.from(await suffix.arrayBuffer()).equals(f.image.subarray(size - 1000)));
  const open = await get(`bytes=${size - 5000}-`);
  t.is(open.status, 206);
  t.true(Buffer.from(await open.arrayBuffer()).equals(f.image.subarray(size - 5000)));
  const beyond = await get(`bytes=${size}-`);
  t.is(beyond.status, 416);
  t.is(beyond.headers.get('content-range'), `bytes */${size}`);
  t.is(((await beyond.json()) as { code: string }).code, 'RangeNotSatisfiable');
  // Ignored as the RFC allows: several ranges, and an If-Range naming another image.
  const multi = await get('bytes=0-9,20-29');
  t.is(multi.status, 200);
  t.is((await multi.arrayBuffer()).byteLength, size);
  const stale = await get('bytes=0-9', { 'if-range': '"0000"' });
  t.is(stale.status, 200);
  t.is((await stale.arrayBuffer()).byteLength, size);
  const current = await get('bytes=0-9', { 'if-range': `"${sha256(f.image)}"` });
  t.is(current.status, 206);
  t.true(Buffer.from(await current.arrayBuffer()).equals(f.image.subarray(0, 10)));
});

test('the image needs a token that may read the snapshot', async (t) => {
  const f = await imageFixture();
  t.teardown(() => f.close());
  t.is((await fetch(f.url)).status, 401);
  const other = await f.server.makeToken('agent', ['db1']);
  const otherRes = await fetch(f.url, { headers: auth(other) });
  t.is(otherRes.status, 404);
  const own = await f.server.makeToken('agent', [f.host]);
  const ownRes = await fetch(f.url, { method: 'HEAD', headers: auth(own) });
  t.is(ownRes.status, 200);
  t.is(ownRes.headers.get('content-length'), String(f.image.length));
});

test('a download cut midway resumes with curl -C - and finishes bit-exact', async (t) => {
  const f = await imageFixture();
  t.teardown(() => f.close());
  const out = join(f.dir, 'resumed.img');
  const header = `Authorization: Bearer ${f.server.adminToken}`;
  // The first transfer is cut after 1 MiB of the answer, as a dropped link cuts it.
  const cut = await cuttingProxy(f.url, 1024 * 1024);
  t.teardown(() => cut.close());
  const broken = await curl(['-o', out, '-H', header, cut.url]);
  t.not(broken.code, 0, 'curl saw the transfer cut');
  const partial = await fileSize(out);
  t.true(partial >= 512 * 1024 && partial < f.image.length, `partial ${partial}`);
  const resumed = await curl(['-f', '-C', '-', '-o', out, '-H', header, f.url]);
  t.is(resumed.code, 0, resumed.stderr);
  t.true((await readFile(out)).equals(f.image));

  // The same with a first part that a Range limited.
  const out2 = join(f.dir, 'ranged.img');
  t.is((await curl(['-f', '-r', '0-2999999', '-o', out2, '-H', header, f.url])).code, 0);
  t.is(await fileSize(out2), 3_000_000);
  t.is((await curl(['-f', '-C', '-', '-o', out2, '-H', header, f.url])).code, 0);
  t.true((await readFile(out2)).equals(f.image));
});

test('a corrupted stored chunk cuts the transfer: curl fails and has no byte past the bytes before it', async (t) => {
  const f = await imageFixture();
  t.teardown(() => f.close());
  // A chunk in the random data after the zero run, far enough in that bytes before it were sent.
  let offset = 0;
  let bad: { id: string; length: number } | undefined;
  for (const e of f.entries) {
    if (offset >= 5 * 1024 * 1024 + 100_000) {
      bad = e;
      break;
    }
    offset += e.length;
  }
  if (!bad) throw new Error('no chunk past 5 MiB');
  t.is(f.image.indexOf(f.image.subarray(offset, offset + bad.length)), offset, 'the chunk occurs once');
  await corruptStoredChunk(f.server.dataDir, bad.id);
  const out = join(f.dir, 'cut.img');
  const got = await curl(['-o', out, '-H', `Authorization: Bearer ${f.server.adminToken}`, f.url]);
  t.not(got.code, 0);
  const partial = await readFile(out);
  t.true(partial.length <= offset, `${partial.length} bytes received, the bad chunk starts at ${offset}`);
  t.true(partial.equals(f.image.subarray(0, partial.length)));
  t.true(f.server.logs.some((l) => l.includes(bad.id) && l.includes('"level":"error"')));
  // A range that starts at the bad chunk fails before any byte: an error answer, not a cut body.
  const res = await fetch(f.url, {
    headers: { ...auth(f.server.adminToken), range: `bytes=${offset}-${offset + 10}` },
  });
  t.is(res.status, 500);
  t.is(((await res.json()) as { code: string }).code, 'Corrupt');
  await rm(out, { force: true });
});

test('zero chunks are sent without reading storage', async (t) => {
  // 2 MiB of zeros holds maximum-size (256 KiB) chunks, all of one id, whose object is removed here.
  const f = await imageFixture();
  t.teardown(() => f.close());
  const zeroId = sha256(Buffer.alloc(256 * 1024));
  // Seven or eight of them: where the random data before the run ends decides where the first cut falls.
  t.true([7, 8].includes(f.entries.filter((e) => e.id === zeroId).length));
  await unlink(await storedChunkFile(f.server.dataDir, zeroId));
  const out = join(f.dir, 'zeros.img');
  const got = await curl(['-f', '-o', out, '-H', `Authorization: Bearer ${f.server.adminToken}`, f.url]);
  t.is(got.code, 0, got.stderr);
  t.true((await readFile(out)).equals(f.image));
  await writeFile(out, '');
});

test('on S3 storage too, the image and a range of it are bit-identical to the source', async (t) => {
  const f = await imageFixture({ storage: 's3' });
  t.teardown(() => f.close());
  const out = join(f.dir, 's3.img');
  const got = await curl(['-f', '-o', out, '-H', `Authorization: Bearer ${f.server.adminToken}`, f.url]);
  t.is(got.code, 0, got.stderr);
  t.true((await readFile(out)).equals(f.image));
  const res = await fetch(f.url, {
    headers: { ...auth(f.server.adminToken), range: 'bytes=100000-3500000' },
  });
  t.is(res.status, 206);
  t.true(Buffer.from(await res.arrayBuffer()).equals(f.image.subarray(100000, 3500001)));
});

test('a client that stops reading stops the reading of chunks: read-ahead is bounded', async (t) => {
  const image = randomBytes(48 * 1024 * 1024);
  const f = await imageFixture({}, image);
  t.teardown(() => f.close());
  // The server's own repository object: count the chunk bytes it is asked for.
  const repo = f.server.repo;
  const readChunk = repo.readChunk.bind(repo);
  let bytesRead = 0;
  repo.readChunk = async (id: string) => {
    const raw = await readChunk(id);
    bytesRead += raw.length;
    return raw;
  };
  const { hostname, port } = new URL(f.server.url);
  const socket = connect(Number(port), hostname);
  t.teardown(() => socket.destroy());
  socket.write(
    `GET /v1/snapshots/${f.snapshot}/image HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${f.server.adminToken}\r\n\r\n`,
  );
  let received = 0;
  socket.on('data', (d: Buffer) => {
    received += d.length;
    // Take the first bytes, then stop reading: the kernel's buffers fill and the server must wait.
    if (received === d.length) socket.pause();
  });
  while (received === 0) await new Promise((r) => setTimeout(r, 20));
  let last = -1;
  const deadline = Date.now() + 20_000;
  while (bytesRead !== last && Date.now() < deadline) {
    last = bytesRead;
    await new Promise((r) => setTimeout(r, 1000));
  }
  t.is(bytesRead, last, 'reading settled');
  // Socket buffers on loopback hold a few MiB; the read-ahead adds at most 8 chunks (256 KiB each here).
  t.true(bytesRead < 24 * 1024 * 1024, `${bytesRead} of ${image.length} bytes read for a stalled client`);
  // Reading again lets the stream finish: the server was waiting, not stuck.
  socket.resume();
  const end = Date.now() + 60_000;
  while (received < image.length && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
  t.true(received > image.length, 'the whole image (and the response head) arrived');
});

test('a download in progress keeps its chunks: forgetting the snapshot and gc meanwhile do not cut it', async (t) => {
  const image = randomBytes(48 * 1024 * 1024);
  const f = await imageFixture({ gcGraceMs: 0 }, image);
  t.teardown(() => f.close());
  const { hostname, port } = new URL(f.server.url);
  const socket = connect(Number(port), hostname);
  t.teardown(() => socket.destroy());
  socket.write(
    `GET /v1/snapshots/${f.snapshot}/image HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${f.server.adminToken}\r\nConnection: close\r\n\r\n`,
  );
  const pieces: Buffer[] = [];
  let ended = false;
  socket.on('data', (d: Buffer) => {
    pieces.push(d);
    // The first bytes, then a pause: most of the image is still to be read from storage.
    if (pieces.length === 1) socket.pause();
  });
  socket.on('close', () => {
    ended = true;
  });
  await pollUntil(
    () => pieces.length,
    (n) => n > 0,
    'the first bytes of the image',
  );
  await f.server.repo.deleteSnapshot(f.snapshot);
  const chunks = new Set(f.entries.map((e) => e.id)).size;
  const report = await f.server.repo.gc();
  t.is(report.chunksDeleted, 0, JSON.stringify(report));
  t.is(report.chunksHeld, chunks, JSON.stringify(report));
  socket.resume();
  await pollUntil(
    () => ended,
    (e) => e,
    'the end of the response',
    { timeoutMs: 60_000 },
  );
  const whole = Buffer.concat(pieces);
  const body = whole.subarray(whole.indexOf('\r\n\r\n') + 4);
  t.is(body.length, image.length);
  t.true(body.equals(image));
  // Once sent, nothing holds the chunks any more: the next gc frees every one.
  const after = await f.server.repo.gc();
  t.is(after.chunksDeleted, chunks, JSON.stringify(after));
});
