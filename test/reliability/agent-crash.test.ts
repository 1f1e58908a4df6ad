import { readFile } from 'node:fs/promises';
import path from 'node:path';
import test from 'ava';
import {
  backupCli,
  type Conn,
  dv,
  lastProgress,
  listSnapshotsCli,
  missingBytes,
  removeDir,
  sha256File,
  summaryOf,
  tempDir,
  verifyCli,
} from '../helpers/reliability-harness.js';
import { writeImage } from '../helpers/reliability-images.js';
import { distinctChunks } from '../helpers/reliability-tripwire.js';
import { startTestServer, TEST_CHUNKER, type TestServer } from '../helpers/server.js';

/**
 * The agent is SIGKILLed half way through a backup and half way through a restore. Running the same command
 * again must complete, and must not redo the work the killed run already finished.
 */
let dir: string;
let srv: TestServer;
let conn: Conn;

test.before(async () => {
  dir = await tempDir('agent-crash');
  srv = await startTestServer({});
  conn = { server: srv.url, token: srv.adminToken };
});

test.after.always(async () => {
  await srv?.stop();
  if (dir) await removeDir(dir);
});

test.serial(
  'a backup whose agent is killed mid-upload completes when run again and uploads only what was missing',
  async (t) => {
    const image = path.join(dir, 'kilo.img');
    const sha = await writeImage(image, { seed: 'kilo', sizeMiB: 24 });
    const mustUpload = await missingBytes(conn, 'kilo', await distinctChunks(image, TEST_CHUNKER));
    let uploadedAtKill = 0;
    // The first run reads the image from stdin and gets only its first 20 MiB: it uploads what it has cut
    // and waits for the rest, so the kill always lands before a commit. (Reading the file, a loaded machine
    // once let the whole backup finish between two progress lines, before the kill arrived.) The kill also
    // needs the progress figures to keep moving while the source stalls: before the backup reported on a
    // ticker, they froze at the last window boundary and this test timed out.
    const head = (await readFile(image)).subarray(0, 20 * 1024 * 1024);
    const first = await backupCli(conn, '-', 'kilo', 'sda', ['--concurrency', '4'], {
      stdinHeld: head,
      killWhen: (stderr) => {
        const p = lastProgress(stderr);
        if (p && p.bytesUploaded >= mustUpload * 0.3) uploadedAtKill = p.bytesUploaded;
        return uploadedAtKill > 0;
      },
    });
    t.true(first.killed, `the agent was killed mid-upload: ${first.code} ${first.stderr.slice(-1500)}`);
    t.is(first.signal, 'SIGKILL');
    t.false(
      (await listSnapshotsCli(conn)).some((s) => s.host === 'kilo'),
      'nothing was committed',
    );

    const again = await backupCli(conn, image, 'kilo', 'sda');
    t.is(again.code, 0, again.stderr);
    const s = summaryOf(again);
    t.is(s.sha256, sha);
    const newBytes = Number(s.newBytes);
    t.true(newBytes < mustUpload, `rerun uploads ${newBytes} of ${mustUpload}`);
    t.true(
      newBytes <= mustUpload - uploadedAtKill * 0.8 + 8 * TEST_CHUNKER.max,
      `rerun uploads ${newBytes}; ${uploadedAtKill} were sent before the kill`,
    );

    const out = path.join(dir, 'kilo-restored.img');
    const r = await dv(['restore', s.snapshot, out, '--json'], conn);
    t.is(r.code, 0, r.stderr);
    t.is(await sha256File(out), sha);
    t.true((await verifyCli(conn)).report.ok);
  },
);

test.serial(
  'a restore whose agent is killed mid-way completes when run again with --in-place and fetches only what is missing',
  async (t) => {
    const image = path.join(dir, 'lima.img');
    const sha = await writeImage(image, { seed: 'lima', sizeMiB: 24 });
    const b = await backupCli(conn, image, 'lima', 'sda');
    t.is(b.code, 0, b.stderr);
    const { snapshot } = summaryOf(b);
    const out = path.join(dir, 'lima-restored.img');
    const size = 24 * 1024 * 1024;

    let doneAtKill = 0;
    // Paced to about 2 s, so progress is reported between 30 % and the end however fast the machine is.
    const first = await dv(
      ['restore', snapshot, out, '--json', '--concurrency', '2', '--limit-download', '8M'],
      {
        ...conn,
        killWhen: (stderr, stdout) => {
          const p = lastProgress(`${stdout}\n${stderr}`);
          if (p && p.done >= size * 0.3 && p.done < size) doneAtKill = p.done;
          return doneAtKill > 0;
        },
      },
    );
    t.true(first.killed, `the restore was killed mid-way:\n${first.stdout}\n${first.stderr}`);
    t.not(await sha256File(out), sha, 'the killed restore left an incomplete image');

    const again = await dv(['restore', snapshot, out, '--in-place', '--json'], conn);
    t.is(again.code, 0, again.stderr);
    const summary = summaryOf(again) as unknown as {
      chunks: number;
      chunksFetched: number;
      chunksReused: number;
      bytesFetched: number;
      verified: boolean;
    };
    t.true(summary.verified);
    t.is(await sha256File(out), sha);
    t.true(summary.chunksReused > 0, 'chunks already written are reused');
    t.true(
      summary.chunksFetched < summary.chunks,
      `fetched ${summary.chunksFetched} of ${summary.chunks} chunks`,
    );
    t.true(
      summary.bytesFetched <= size - doneAtKill * 0.8,
      `fetched ${summary.bytesFetched} bytes; ${doneAtKill} were written before the kill`,
    );
  },
);
