import { InvalidInputError } from '../common/errors.js';
import {
  type CalendarDuration,
  formatRetentionDuration,
  isZeroDuration,
  parseRetentionDuration,
  subtractCalendarDuration,
} from './durations.js';
import type { ForgetGroupPlan, ForgetPlan, RetentionPolicy, SnapshotInfo } from './types.js';

/**
 * Which snapshots a retention policy keeps, and why: restic's `forget` semantics
 * (internal/restic/snapshot_policy.go), as a pure function. No clock, no I/O: "within" is measured from the
 * newest snapshot of each group, so running it twice, or late, decides the same.
 *
 * Per group (tenant + host + disk), snapshots newest first; a snapshot is kept when any rule keeps it:
 * - tags: it carries every tag of one of the policy's tag lists ("a,b" means a AND b);
 * - within D: its time is after newest - D;
 * - last/hourly/daily/weekly/monthly/yearly N: it is the newest of a not-yet-seen calendar bucket (UTC;
 *   ISO weeks) while N buckets remain; -1 means unlimited. Once the oldest snapshot is reached with count
 *   left, it is kept too (restic >= 0.17: keeps the history as long as the policy allows);
 * - within-hourly/daily/... D: the newest of each bucket among the snapshots within D of the newest.
 */

type Bucketer = (t: Date, nr: number) => number;
const ymdh: Bucketer = (d) =>
  d.getUTCFullYear() * 1_000_000 + (d.getUTCMonth() + 1) * 10_000 + d.getUTCDate() * 100 + d.getUTCHours();
const ymd: Bucketer = (d) => d.getUTCFullYear() * 10_000 + (d.getUTCMonth() + 1) * 100 + d.getUTCDate();
const yw: Bucketer = (d) => {
  const { year, week } = isoWeek(d);
  return year * 100 + week;
};
const ym: Bucketer = (d) => d.getUTCFullYear() * 100 + (d.getUTCMonth() + 1);
const y: Bucketer = (d) => d.getUTCFullYear();
const always: Bucketer = (_d, nr) => nr;

/** ISO 8601 week: weeks start on Monday; week 1 holds the year's first Thursday. */
export function isoWeek(d: Date): { year: number; week: number } {
  const day = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate());
  const weekday = (new Date(day).getUTCDay() + 6) % 7; // Monday 0 .. Sunday 6
  const thursday = new Date(day + (3 - weekday) * 86_400_000);
  const year = thursday.getUTCFullYear();
  const week = 1 + Math.floor((thursday.getTime() - Date.UTC(year, 0, 1)) / (7 * 86_400_000));
  return { year, week };
}

interface ParsedPolicy {
  counts: { count: number; bucket: Bucketer; reason: string }[];
  within?: CalendarDuration;
  withins: { within: CalendarDuration; bucket: Bucketer; reason: string }[];
  tagLists: string[][];
}

function parsePolicy(p: RetentionPolicy): ParsedPolicy {
  const count = (name: string, v: number | undefined) => {
    if (v === undefined) return 0;
    if (!Number.isSafeInteger(v) || v < -1)
      throw new InvalidInputError(`keep-${name} must be a whole number >= 0, or -1 for all`);
    return v;
  };
  const dur = (v: string | undefined) => (v === undefined ? undefined : parseRetentionDuration(v));
  const withinOf = [
    [p.withinHourly, ymdh, 'hourly within'],
    [p.withinDaily, ymd, 'daily within'],
    [p.withinWeekly, yw, 'weekly within'],
    [p.withinMonthly, ym, 'monthly within'],
    [p.withinYearly, y, 'yearly within'],
  ] as const;
  const within = dur(p.within);
  return {
    counts: [
      { count: count('last', p.last), bucket: always, reason: 'last snapshot' },
      { count: count('hourly', p.hourly), bucket: ymdh, reason: 'hourly snapshot' },
      { count: count('daily', p.daily), bucket: ymd, reason: 'daily snapshot' },
      { count: count('weekly', p.weekly), bucket: yw, reason: 'weekly snapshot' },
      { count: count('monthly', p.monthly), bucket: ym, reason: 'monthly snapshot' },
      { count: count('yearly', p.yearly), bucket: y, reason: 'yearly snapshot' },
    ],
    within: within && !isZeroDuration(within) ? within : undefined,
    withins: withinOf.flatMap(([text, bucket, reason]) => {
      const d = dur(text);
      return d && !isZeroDuration(d) ? [{ within: d, bucket, reason }] : [];
    }),
    tagLists: (p.tags ?? [])
      .map((t) =>
        t
          .split(',')
          .map((s) => s.trim())
          .filter((s) => s !== ''),
      )
      .filter((l) => l.length > 0),
  };
}

export function isEmptyPolicy(p: ParsedPolicy): boolean {
  return (
    p.counts.every((c) => c.count === 0) && !p.within && p.withins.length === 0 && p.tagLists.length === 0
  );
}

/** Newest first; equal times by id, so the outcome never depends on input order. */
function newestFirst(a: SnapshotInfo, b: SnapshotInfo): number {
  return Date.parse(b.time) - Date.parse(a.time) || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0);
}

export function applyPolicyToGroup(
  list: SnapshotInfo[],
  policy: RetentionPolicy,
): Omit<ForgetGroupPlan, 'host' | 'disk'> {
  const p = parsePolicy(policy);
  const sorted = [...list].sort(newestFirst);
  if (isEmptyPolicy(p)) {
    // restic keeps everything when no rule is given: an empty policy must never mean "delete all".
    return { keep: sorted.map((snapshot) => ({ snapshot, reasons: ['policy is empty'] })), remove: [] };
  }
  if (sorted.length === 0) return { keep: [], remove: [] };
  const latest = Date.parse((sorted[0] as SnapshotInfo).time);
  const counts = p.counts.map((c) => ({ ...c, last: Number.NaN }));
  const withins = p.withins.map((w) => ({
    ...w,
    since: subtractCalendarDuration(latest, w.within),
    last: Number.NaN,
  }));
  const withinSince = p.within ? subtractCalendarDuration(latest, p.within) : undefined;
  const keep: ForgetGroupPlan['keep'] = [];
  const remove: SnapshotInfo[] = [];

  sorted.forEach((snap, nr) => {
    const t = new Date(snap.time);
    const reasons: string[] = [];
    for (const list of p.tagLists) {
      if (list.every((tag) => snap.tags.includes(tag))) reasons.push(`has tags [${list.join(', ')}]`);
    }
    if (p.within && withinSince !== undefined && t.getTime() > withinSince)
      reasons.push(`within ${formatRetentionDuration(p.within)}`);
    for (const c of counts) {
      if (c.count > 0 || c.count === -1) {
        const val = c.bucket(t, nr);
        if (val !== c.last || nr === sorted.length - 1) {
          c.last = val;
          if (c.count > 0) c.count--;
          reasons.push(c.reason);
        }
      }
    }
    for (const w of withins) {
      if (t.getTime() > w.since) {
        const val = w.bucket(t, nr);
        if (val !== w.last) {
          w.last = val;
          reasons.push(`${w.reason} ${formatRetentionDuration(w.within)}`);
        }
      }
    }
    if (reasons.length > 0) keep.push({ snapshot: snap, reasons });
    else remove.push(snap);
  });
  return { keep, remove };
}

/** The whole plan: one group per tenant + host + disk (a tenant's policy never reaches another's snapshots). */
export function planRetention(snapshots: SnapshotInfo[], policy: RetentionPolicy): ForgetPlan {
  parsePolicy(policy); // reject a bad policy even when there is nothing to apply it to
  const groups = new Map<string, SnapshotInfo[]>();
  for (const s of snapshots) {
    const key = JSON.stringify([s.tenant, s.host, s.disk]);
    const g = groups.get(key);
    if (g) g.push(s);
    else groups.set(key, [s]);
  }
  const out: ForgetGroupPlan[] = [];
  for (const key of [...groups.keys()].sort()) {
    const list = groups.get(key) as SnapshotInfo[];
    const first = list[0] as SnapshotInfo;
    out.push({ host: first.host, disk: first.disk, ...applyPolicyToGroup(list, policy) });
  }
  return { groups: out };
}
