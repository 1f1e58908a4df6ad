import { backup, chunkOf, type TestChunk } from './api-client.js';
import type { TestServer } from './server.js';

/**
 * A small fleet backed up over the real protocol, for the web console's tests and screenshots: two tenants,
 * several hosts and disks, nightly series with changing data, tags, a disk that stopped backing up (its
 * newest snapshot three days old) and one whose last backup met unreadable sectors.
 */
export interface ConsoleFleet {
  /** Admin of tenant acme only. */
  acmeAdmin: string;
  /** Agent token of web1 (tenant default). */
  agent: string;
  /** `host/disk` of every disk with snapshots, per tenant. */
  disks: { default: string[]; acme: string[] };
}

const DAY = 86_400_000;

/**
 * The nightly backup's time `daysAgo` nights before the last one: 02:00 UTC, of today once that has passed,
 * else of yesterday (a snapshot dated ahead of the server's clock is refused).
 */
export function night(daysAgo: number, now = Date.now()): string {
  const last = new Date(now);
  last.setUTCHours(2, 0, 0, 0);
  if (last.getTime() > now) last.setTime(last.getTime() - DAY);
  return new Date(last.getTime() - daysAgo * DAY).toISOString();
}

/**
 * `nights` snapshots of one disk, oldest first: each keeps `base` chunks and replaces `changed` of them with
 * that night's own (so each night carries exactly `changed` new chunks over the one before).
 */
async function series(
  srv: TestServer,
  token: string,
  host: string,
  disk: string,
  opts: {
    nights: number[];
    base: number;
    changed: number;
    size?: number;
    tags?: (i: number) => string[];
    unreadableLast?: [number, number][];
  },
): Promise<void> {
  for (const [i, daysAgo] of opts.nights.entries()) {
    const chunks: TestChunk[] = [];
    for (let k = 0; k < opts.base; k++) {
      const own = k < opts.changed && i > 0;
      chunks.push(
        chunkOf(own ? `${host}/${disk} night ${i} chunk ${k}` : `${host}/${disk} chunk ${k}`, opts.size),
      );
    }
    const last = i === opts.nights.length - 1;
    await backup(srv.url, token, host, disk, chunks, {
      time: night(daysAgo),
      tags: opts.tags?.(i) ?? [],
      ...(last && opts.unreadableLast ? { unreadable: opts.unreadableLast } : {}),
    });
  }
}

export async function seedConsoleFleet(srv: TestServer): Promise<ConsoleFleet> {
  const agent = await srv.makeToken('agent', ['web1', 'db1']);
  await srv.makeToken('agent', ['shop'], 'acme');
  const acmeAdmin = await srv.makeToken('admin', [], 'acme');
  // Nights dated in the past are imports, which only admin tokens may commit (docs/retention.md).
  const admin = srv.adminToken;
  // web1/sda: fourteen nights up to last night, a few of them tagged.
  await series(srv, admin, 'web1', 'sda', {
    nights: Array.from({ length: 14 }, (_, i) => 13 - i),
    base: 12,
    changed: 2,
    tags: (i) => (i === 0 ? ['before-upgrade'] : i % 7 === 0 ? ['weekly'] : []),
  });
  await series(srv, admin, 'web1', 'sdb', { nights: [2, 1, 0], base: 6, changed: 1 });
  // db1/nvme0n1 stopped three nights ago, and its last backup could not read two ranges.
  await series(srv, admin, 'db1', 'nvme0n1', {
    nights: [6, 5, 4, 3],
    base: 10,
    changed: 4,
    unreadableLast: [
      [81_920, 4096],
      [200_704, 8192],
    ],
  });
  await series(srv, acmeAdmin, 'shop', 'vda', { nights: [3, 2, 1, 0], base: 8, changed: 3 });
  return {
    acmeAdmin,
    agent,
    disks: { default: ['db1/nvme0n1', 'web1/sda', 'web1/sdb'], acme: ['shop/vda'] },
  };
}
