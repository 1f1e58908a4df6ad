import { createHash, timingSafeEqual } from 'node:crypto';

/**
 * How the server keeps bearer secrets (tokens, share links): only the SHA-256 of each, so a copy of the data
 * folder holds nothing that can be presented back.
 */
export function hashSecret(secret: string): string {
  return createHash('sha256').update(secret, 'utf8').digest('hex');
}

/** Whether `secret` is the one `storedHash` was made from, compared in constant time. */
export function secretMatches(storedHash: string, secret: string): boolean {
  const expected = Buffer.from(storedHash, 'hex');
  const actual = Buffer.from(hashSecret(secret), 'hex');
  // A timing difference must not reveal how much of a hash matched.
  return expected.length === actual.length && timingSafeEqual(expected, actual);
}
