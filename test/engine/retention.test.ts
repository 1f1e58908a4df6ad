import test from 'ava';
import { parseFixedDurationMs, parseRetentionDuration } from '../../repo-engine/durations.js';
import { isoWeek, planRetention } from '../../repo-engine/retention.js';
import type { RetentionPolicy, SnapshotInfo } from '../../repo-engine/types.js';

function snap(time: string, opts: { host?: string; tags?: string[]; id?: string } = {}): SnapshotInfo {
  return {
    id: opts.id ?? Buffer.from(time).toString('hex').padEnd(64, '0').slice(0, 64),
    host: opts.host ?? 'pc1',
    disk: 'sda',
    time: new Date(time).toISOString(),
    receivedAt: new Date(time).toISOString(),
    size: 1,
    sha256: '0'.repeat(64),
    chunkCount: 1,
    tags: opts.tags ?? [],
    unreadable: [],
    sourceFormat: 'raw',
    tenant: 'default',
  };
}

/** Kept times (newest first) and their reasons, for one group. */
function kept(times: (string | SnapshotInfo)[], policy: RetentionPolicy): [string, string[]][] {
  const plan = planRetention(
    times.map((t) => (typeof t === 'string' ? snap(t) : t)),
    policy,
  );
  return (plan.groups[0]?.keep ?? []).map((k) => [k.snapshot.time.slice(0, 19), k.reasons]);
}

const table: { title: string; times: string[]; policy: RetentionPolicy; expect: [string, string[]][] }[] = [
  {
    title: 'monthly keeps the newest snapshot of each calendar month, month ends included',
    times: [
      '2024-01-31T23:59:00Z',
      '2024-02-01T00:00:00Z',
      '2024-02-29T12:00:00Z',
      '2024-03-01T00:00:00Z',
      '2024-03-31T23:00:00Z',
    ],
    policy: { monthly: 3 },
    expect: [
      ['2024-03-31T23:00:00', ['monthly snapshot']],
      ['2024-02-29T12:00:00', ['monthly snapshot']],
      ['2024-01-31T23:59:00', ['monthly snapshot']],
    ],
  },
  {
    title: 'weekly uses ISO weeks across a year end (2020-12-31 and 2021-01-03 share week 2020-W53)',
    times: ['2020-12-28T10:00:00Z', '2020-12-31T10:00:00Z', '2021-01-03T10:00:00Z', '2021-01-04T10:00:00Z'],
    policy: { weekly: 5 },
    expect: [
      ['2021-01-04T10:00:00', ['weekly snapshot']],
      ['2021-01-03T10:00:00', ['weekly snapshot']],
      // The oldest is kept while counts remain (restic >= 0.17).
      ['2020-12-28T10:00:00', ['weekly snapshot']],
    ],
  },
  {
    title: 'two snapshots in one daily bucket: only the newest counts, and the count runs out',
    times: ['2024-05-03T08:00:00Z', '2024-05-03T20:00:00Z', '2024-05-02T12:00:00Z', '2024-05-01T12:00:00Z'],
    policy: { daily: 2 },
    expect: [
      ['2024-05-03T20:00:00', ['daily snapshot']],
      ['2024-05-02T12:00:00', ['daily snapshot']],
    ],
  },
  {
    title: 'keep-within is measured from the newest snapshot, not from now, and is exclusive at its start',
    times: ['2020-06-10T00:00:00Z', '2020-06-08T00:00:01Z', '2020-06-08T00:00:00Z', '2020-06-01T00:00:00Z'],
    policy: { within: '2d' },
    expect: [
      ['2020-06-10T00:00:00', ['within 2d']],
      ['2020-06-08T00:00:01', ['within 2d']],
    ],
  },
  {
    title: 'keep-within with months steps back by calendar months (31 March - 1m = 2 March in a leap year)',
    times: ['2024-03-31T00:00:00Z', '2024-03-02T00:00:01Z', '2024-03-02T00:00:00Z', '2024-02-28T00:00:00Z'],
    policy: { within: '1m' },
    expect: [
      ['2024-03-31T00:00:00', ['within 1m']],
      ['2024-03-02T00:00:01', ['within 1m']],
    ],
  },
  {
    title: 'rules combine by union and each kept snapshot lists every rule that kept it',
    times: [
      '2024-01-10T12:00:00Z',
      '2024-01-10T06:00:00Z',
      '2024-01-09T12:00:00Z',
      '2023-12-20T12:00:00Z',
      '2023-11-05T12:00:00Z',
    ],
    policy: { last: 2, daily: 2, monthly: 2 },
    expect: [
      ['2024-01-10T12:00:00', ['last snapshot', 'daily snapshot', 'monthly snapshot']],
      ['2024-01-10T06:00:00', ['last snapshot']],
      ['2024-01-09T12:00:00', ['daily snapshot']],
      ['2023-12-20T12:00:00', ['monthly snapshot']],
    ],
  },
  {
    title: 'keep-within-daily keeps one per day inside the window only',
    times: ['2024-01-10T12:00:00Z', '2024-01-10T06:00:00Z', '2024-01-09T12:00:00Z', '2024-01-05T12:00:00Z'],
    policy: { withinDaily: '3d' },
    expect: [
      ['2024-01-10T12:00:00', ['daily within 3d']],
      ['2024-01-09T12:00:00', ['daily within 3d']],
    ],
  },
  {
    title: 'yearly with -1 keeps the newest of every year',
    times: ['2024-01-01T00:00:00Z', '2023-12-31T23:59:59Z', '2023-01-01T00:00:00Z', '2022-07-01T00:00:00Z'],
    policy: { yearly: -1 },
    expect: [
      ['2024-01-01T00:00:00', ['yearly snapshot']],
      ['2023-12-31T23:59:59', ['yearly snapshot']],
      ['2022-07-01T00:00:00', ['yearly snapshot']],
    ],
  },
  {
    title: 'hourly buckets are UTC hours',
    times: ['2024-01-01T10:59:59Z', '2024-01-01T10:00:00Z', '2024-01-01T09:59:59Z'],
    policy: { hourly: 1 },
    expect: [['2024-01-01T10:59:59', ['hourly snapshot']]],
  },
];

for (const row of table) {
  test(`retention: ${row.title}`, (t) => {
    t.deepEqual(kept(row.times, row.policy), row.expect);
  });
}

test('retention: keep-tag keeps snapshots carrying every tag of one list, without using up counts', (t) => {
  const list = [
    snap('2024-01-03T00:00:00Z'),
    snap('2024-01-02T00:00:00Z', { tags: ['golden', 'win'] }),
    snap('2024-01-01T00:00:00Z', { tags: ['golden'] }),
  ];
  t.deepEqual(kept(list, { tags: ['golden,win'], last: 1 }), [
    ['2024-01-03T00:00:00', ['last snapshot']],
    ['2024-01-02T00:00:00', ['has tags [golden, win]']],
  ]);
});

test('retention: an empty policy keeps everything', (t) => {
  const plan = planRetention([snap('2024-01-01T00:00:00Z'), snap('2024-01-02T00:00:00Z')], {});
  t.is(plan.groups[0]?.remove.length, 0);
  t.deepEqual(
    plan.groups[0]?.keep.map((k) => k.reasons),
    [['policy is empty'], ['policy is empty']],
  );
});

test('retention: keep-within further back than a date reaches keeps everything, and counts years as given', (t) => {
  const times = ['2026-01-10T00:00:00Z', '1930-06-01T00:00:00Z'];
  for (const within of ['300000y', '4000000m', '999999999999d']) {
    const plan = planRetention(
      times.map((x) => snap(x)),
      { within },
    );
    t.is(plan.groups[0]?.remove.length, 0, within);
    t.is(plan.groups[0]?.keep.length, 2, within);
  }
  // 1990 years back from 2026 is the year 36, not 1936: the 1930 snapshot is within.
  t.deepEqual(
    kept(times, { within: '1990y' }).map(([time]) => time),
    ['2026-01-10T00:00:00', '1930-06-01T00:00:00'],
  );
  t.deepEqual(
    kept(times, { within: '90y' }).map(([time]) => time),
    ['2026-01-10T00:00:00'],
  );
});

test('retention: groups are per host and disk, each measured from its own newest snapshot', (t) => {
  const plan = planRetention(
    [
      snap('2024-01-10T00:00:00Z', { host: 'a' }),
      snap('2024-01-01T00:00:00Z', { host: 'a' }),
      snap('2023-01-01T00:00:00Z', { host: 'b' }),
      snap('2022-12-31T00:00:00Z', { host: 'b' }),
    ],
    { within: '2d' },
  );
  t.deepEqual(
    plan.groups.map((g) => [
      g.host,
      g.keep.map((k) => k.snapshot.time.slice(0, 10)),
      g.remove.map((r) => r.time.slice(0, 10)),
    ]),
    [
      ['a', ['2024-01-10'], ['2024-01-01']],
      ['b', ['2023-01-01', '2022-12-31'], []],
    ],
  );
});

test('retention: input order does not change the decision', (t) => {
  const times = [
    '2024-01-03T00:00:00Z',
    '2024-01-01T00:00:00Z',
    '2024-01-02T00:00:00Z',
    '2023-12-01T00:00:00Z',
  ];
  t.deepEqual(kept(times, { daily: 2 }), kept([...times].reverse(), { daily: 2 }));
});

test('ISO weeks: years whose first days belong to the previous year', (t) => {
  t.deepEqual(isoWeek(new Date('2021-01-03T12:00:00Z')), { year: 2020, week: 53 });
  t.deepEqual(isoWeek(new Date('2021-01-04T00:00:00Z')), { year: 2021, week: 1 });
  t.deepEqual(isoWeek(new Date('2019-12-30T00:00:00Z')), { year: 2020, week: 1 });
  t.deepEqual(isoWeek(new Date('2024-12-29T23:59:59Z')), { year: 2024, week: 52 });
});

test('durations: restic form for retention, fixed lengths for grace periods, bad input refused', (t) => {
  t.deepEqual(parseRetentionDuration('1y2m3d4h'), { years: 1, months: 2, days: 3, hours: 4 });
  t.is(parseFixedDurationMs('30m'), 30 * 60_000);
  t.is(parseFixedDurationMs('1h30m'), 90 * 60_000);
  t.is(parseFixedDurationMs('24h'), 86_400_000);
  t.throws(() => parseRetentionDuration('2w'), { message: /invalid duration/ });
  t.throws(() => parseFixedDurationMs('soon'), { message: /invalid duration/ });
  t.throws(() => planRetention([], { within: 'x' }), { message: /invalid duration/ });
  t.throws(() => planRetention([], { daily: -2 }), { message: /keep-daily/ });
});
