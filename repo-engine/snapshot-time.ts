import { DiskvaultError, InvalidInputError } from '../common/errors.js';

/**
 * Which time a snapshot has. A manifest carries the time its agent claims (`time`: the --time flag, or when
 * the backup began); the server adds the time it received the commit (`receivedAt`), from its own clock, and
 * stores both in the manifest. Everything that orders or ages snapshots (retention, "newest", the
 * freshness gauges, a session's previous snapshot) uses the effective time: the claimed time, but never
 * later than the receipt. So no snapshot can pose as newer than it is, whatever its agent wrote.
 *
 * At commit the claimed time must be plausible: not after the receipt by more than the clock-skew
 * allowance (a future date is refused), and, unless the committer may backdate (an admin token importing
 * old images), not before the session began by more than that allowance either.
 */

/** Clocks of agent and server may differ by this much before a time counts as in the future or backdated. */
export const DEFAULT_CLOCK_SKEW_MS = 5 * 60_000;

export interface CommitTimeRules {
  /** The server's clock when the commit arrived. */
  receivedMs: number;
  /** When the commit's session was opened (the agent takes its time just before). */
  sessionStartedMs: number;
  clockSkewMs: number;
  /** Admin imports may carry any past time; agents only times of the backup itself. */
  mayBackdate: boolean;
}

/** Throws InvalidInput for a time in the future, Forbidden for a backdated time the committer may not use. */
export function checkCommitTime(time: string, rules: CommitTimeRules): void {
  const claimed = Date.parse(time);
  const ahead = claimed - rules.receivedMs;
  if (ahead > rules.clockSkewMs) {
    throw new InvalidInputError(
      `snapshot time ${time} is ${describeMs(ahead)} ahead of the server's clock (${iso(rules.receivedMs)}; allowed skew ${describeMs(rules.clockSkewMs)}): check the agent's clock or --time`,
    );
  }
  const behind = rules.sessionStartedMs - claimed;
  if (!rules.mayBackdate && behind > rules.clockSkewMs) {
    throw new DiskvaultError(
      'Forbidden',
      `snapshot time ${time} is ${describeMs(behind)} before this backup began (${iso(rules.sessionStartedMs)}): a backdated --time (an import) needs an admin token`,
    );
  }
}

/** The time retention and monitoring use: the claimed time, clamped to the receipt. */
export function effectiveTimeMs(time: string, receivedAt: string): number {
  return Math.min(Date.parse(time), Date.parse(receivedAt));
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}

function describeMs(ms: number): string {
  const s = Math.round(ms / 1000);
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172_800) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86_400)} days`;
}
