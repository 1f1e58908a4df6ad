import { InvalidInputError } from '../common/errors.js';

/**
 * Two kinds of duration, kept apart because their "m" differs:
 * - retention durations follow restic ("1y2m3d4h": years, MONTHS, days, hours) and are calendar
 *   arithmetic, so "1m" back from 31 March is 3 March (Go's AddDate normalisation, which restic uses);
 * - grace/lease durations ("30s", "15m", "24h", "7d") are fixed lengths in milliseconds, "m" is MINUTES.
 */
export interface CalendarDuration {
  years: number;
  months: number;
  days: number;
  hours: number;
}

const CALENDAR_UNITS: Record<string, keyof CalendarDuration> = {
  y: 'years',
  m: 'months',
  d: 'days',
  h: 'hours',
};

export function parseRetentionDuration(text: string): CalendarDuration {
  const d: CalendarDuration = { years: 0, months: 0, days: 0, hours: 0 };
  if (typeof text !== 'string' || !/^(\d+[ymdh])+$/.test(text)) {
    throw new InvalidInputError(
      `invalid duration ${JSON.stringify(text)}: expected a form like "1y2m3d4h" (y, m = months, d, h)`,
    );
  }
  for (const [, num, unit] of text.matchAll(/(\d+)([ymdh])/g)) {
    const n = Number(num);
    if (!Number.isSafeInteger(n)) throw new InvalidInputError(`duration ${text} is out of range`);
    d[CALENDAR_UNITS[unit as string] as keyof CalendarDuration] += n;
  }
  return d;
}

export function isZeroDuration(d: CalendarDuration): boolean {
  return d.years === 0 && d.months === 0 && d.days === 0 && d.hours === 0;
}

/** restic's Duration.String(): zero parts left out. */
export function formatRetentionDuration(d: CalendarDuration): string {
  let s = '';
  if (d.years) s += `${d.years}y`;
  if (d.months) s += `${d.months}m`;
  if (d.days) s += `${d.days}d`;
  if (d.hours) s += `${d.hours}h`;
  return s;
}

/**
 * `t` moved back by `d`, calendar-wise, in UTC: months and days that overflow are normalised as Go's AddDate
 * does. Further back than a Date reaches (about 275,000 years) is -Infinity, before every snapshot: a cutoff
 * that could not be computed must keep everything, never nothing.
 */
export function subtractCalendarDuration(t: number, d: CalendarDuration): number {
  const x = new Date(t);
  const back = new Date(0);
  // setUTCFullYear takes a year as given, where Date.UTC would read 0-99 as 1900-1999.
  back.setUTCFullYear(x.getUTCFullYear() - d.years, x.getUTCMonth() - d.months, x.getUTCDate() - d.days);
  back.setUTCHours(x.getUTCHours(), x.getUTCMinutes(), x.getUTCSeconds(), x.getUTCMilliseconds());
  const ms = back.getTime() - d.hours * 3_600_000;
  return Number.isNaN(ms) ? Number.NEGATIVE_INFINITY : ms;
}

const FIXED_UNITS_MS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 604_800_000,
};

/** "90s", "30m", "24h", "7d", "1h30m", or a bare number of milliseconds. */
export function parseFixedDurationMs(text: string): number {
  if (typeof text === 'string' && /^\d+$/.test(text)) return Number(text);
  if (typeof text !== 'string' || !/^(\d+(ms|s|m|h|d|w))+$/.test(text)) {
    throw new InvalidInputError(
      `invalid duration ${JSON.stringify(text)}: expected a form like "30m", "24h", "7d" (m = minutes)`,
    );
  }
  let ms = 0;
  for (const [, num, unit] of text.matchAll(/(\d+)(ms|s|m|h|d|w)/g))
    ms += Number(num) * (FIXED_UNITS_MS[unit as string] as number);
  if (!Number.isSafeInteger(ms)) throw new InvalidInputError(`duration ${text} is out of range`);
  return ms;
}
