import test from 'ava';
import Database from 'better-sqlite3';
import { errorResponse } from '../../api/errors.js';

/**
 * A full disk met outside the storage adapter still reaches the client as 507 StorageFull (which an agent
 * does not retry), not as a 500 it would retry until it gave up with "internal server error".
 */

/** The error SQLite really raises when its database may not grow: a page limit stands in for the disk. */
function sqliteFullError(): unknown {
  const db = new Database(':memory:');
  try {
    db.exec('CREATE TABLE t (b BLOB)');
    db.pragma('max_page_count = 8');
    const insert = db.prepare('INSERT INTO t VALUES (?)');
    for (let i = 0; i < 100; i++) insert.run(Buffer.alloc(4096));
  } catch (err) {
    return err;
  } finally {
    db.close();
  }
  throw new Error('the database grew past its page limit');
}

test("the index's database out of space answers 507 StorageFull and keeps the error for the log", (t) => {
  const err = sqliteFullError();
  t.is((err as { code?: string }).code, 'SQLITE_FULL');
  const r = errorResponse(err);
  t.is(r.status, 507);
  t.deepEqual(r.body, { code: 'StorageFull', message: "the server's disk is full" });
  t.true(r.internal);
});

test('any other failure of the index stays a 500 with nothing of it in the answer', (t) => {
  const db = new Database(':memory:');
  let err: unknown;
  try {
    db.exec('SELECT * FROM missing_table');
  } catch (e) {
    err = e;
  } finally {
    db.close();
  }
  const r = errorResponse(err);
  t.is(r.status, 500);
  t.deepEqual(r.body, { code: 'Internal', message: 'internal server error' });
});
