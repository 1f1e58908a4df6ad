import { InvalidInputError } from '../common/errors.js';
import { checkName as checkNameAs, TAG_PATTERN } from '../common/names.js';
import { parseRetentionDuration } from '../repo-engine/durations.js';
import { HEX64 } from '../repo-engine/manifest-codec.js';
import type { RetentionPolicy } from '../repo-engine/types.js';

/**
 * Checks on everything a client sends, before it reaches the engine. Names and ids are the only things
 * that ever become storage keys or SQL parameters, so they are held to the shared patterns here.
 */
export function checkId(value: unknown, what = 'id'): string {
  if (typeof value !== 'string' || !HEX64.test(value))
    throw new InvalidInputError(`${what} must be 64 lowercase hex characters`);
  return value;
}

/** Session ids are the engine's to choose; accept 32 to 64 lowercase hex (the engine issues 32). */
const SESSION_ID = /^[0-9a-f]{32,64}$/;
export function checkSessionId(value: unknown): string {
  if (typeof value !== 'string' || !SESSION_ID.test(value))
    throw new InvalidInputError('session id must be 32 to 64 lowercase hex characters');
  return value;
}

export function checkName(value: unknown, what: string): string {
  return checkNameAs(what, value);
}

export function optionalName(value: unknown, what: string): string | undefined {
  return value === undefined || value === '' ? undefined : checkName(value, what);
}

export function asObject(body: unknown): Record<string, unknown> {
  if (typeof body !== 'object' || body === null || Array.isArray(body))
    throw new InvalidInputError('the body must be a JSON object');
  return body as Record<string, unknown>;
}

const COUNT_KEYS = ['last', 'hourly', 'daily', 'weekly', 'monthly', 'yearly'] as const;
const DURATION_KEYS = [
  'within',
  'withinHourly',
  'withinDaily',
  'withinWeekly',
  'withinMonthly',
  'withinYearly',
] as const;

export function checkPolicy(value: unknown): RetentionPolicy {
  const o = asObject(value);
  const known = new Set<string>([...COUNT_KEYS, ...DURATION_KEYS, 'tags']);
  for (const k of Object.keys(o))
    if (!known.has(k)) throw new InvalidInputError(`unknown policy key ${JSON.stringify(k)}`);
  const policy: RetentionPolicy = {};
  for (const k of COUNT_KEYS) {
    const v = o[k];
    if (v === undefined) continue;
    // restic treats -1 as "unlimited"; accept it for the same reason.
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < -1)
      throw new InvalidInputError(`policy.${k} must be an integer >= -1`);
    policy[k] = v;
  }
  for (const k of DURATION_KEYS) {
    const v = o[k];
    if (v === undefined) continue;
    if (typeof v !== 'string') throw new InvalidInputError(`policy.${k} must be a duration like 1y2m3d4h`);
    // The engine's own parser, so the API never accepts a form retention would then reject.
    parseRetentionDuration(v);
    policy[k] = v;
  }
  if (o.tags !== undefined) {
    if (!Array.isArray(o.tags) || !o.tags.every((t) => typeof t === 'string' && TAG_PATTERN.test(t))) {
      throw new InvalidInputError('policy.tags must be an array of tags');
    }
    policy.tags = o.tags as string[];
  }
  const hasRule =
    COUNT_KEYS.some((k) => (policy[k] ?? 0) !== 0) ||
    DURATION_KEYS.some((k) => policy[k]) ||
    (policy.tags?.length ?? 0) > 0;
  // An empty policy would keep nothing: refuse it rather than delete every snapshot by accident.
  if (!hasRule) throw new InvalidInputError('the policy keeps nothing: give at least one keep rule');
  return policy;
}
