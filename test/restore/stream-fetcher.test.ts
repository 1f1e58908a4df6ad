import test from 'ava';
import type { ChunkFetcher } from '../../agent/restore/chunk-fetcher.js';
import { streamChunkFetcher } from '../../agent/restore/stream-fetcher.js';
import { DiskvaultError } from '../../common/errors.js';

/** Counts the chunks a fetcher was asked for one by one: the per-request path. */
function perChunk(): ChunkFetcher & { asked: string[] } {
  const asked: string[] = [];
  return {
    asked,
    async fetch(id: string) {
      asked.push(id);
      return { encoding: 'raw', payload: Buffer.from(id), verified: false };
    },
  };
}

const ids = Array.from({ length: 10 }, (_, i) => i.toString(16).padStart(64, '0'));

test('an upgrade refused by the server or a proxy in between leaves every chunk to the GETs, asked once', async (t) => {
  let opens = 0;
  const fallback = perChunk();
  const fetcher = streamChunkFetcher(
    {
      openChunkFetchStream: async () => {
        opens++;
        throw new DiskvaultError('InvalidInput', 'upgrades are not passed', { status: 400 });
      },
    },
    fallback,
  );
  for (const id of ids) t.is((await fetcher.fetch(id, 100)).payload.toString(), id);
  t.deepEqual(fallback.asked, ids);
  t.is(opens, 1);
  fetcher.close();
});

test('a server that cannot be reached for the upgrade is tried a few times, then left to the GETs', async (t) => {
  let opens = 0;
  const fallback = perChunk();
  const fetcher = streamChunkFetcher(
    {
      openChunkFetchStream: async () => {
        opens++;
        throw Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' });
      },
    },
    fallback,
  );
  for (const id of ids) await fetcher.fetch(id, 100);
  t.deepEqual(fallback.asked, ids);
  t.is(opens, 4);
  fetcher.close();
});

test('an older server (no route) is asked once, and a fired signal stops every fetch', async (t) => {
  let opens = 0;
  const fallback = perChunk();
  const controller = new AbortController();
  const fetcher = streamChunkFetcher(
    {
      openChunkFetchStream: async () => {
        opens++;
        return undefined;
      },
    },
    fallback,
    controller.signal,
  );
  await fetcher.fetch(ids[0], 100);
  await fetcher.fetch(ids[1], 100);
  t.is(opens, 1);
  controller.abort(new Error('interrupted'));
  await t.throwsAsync(fetcher.fetch(ids[2], 100), { message: 'interrupted' });
  t.deepEqual(fallback.asked, ids.slice(0, 2));
  fetcher.close();
});
