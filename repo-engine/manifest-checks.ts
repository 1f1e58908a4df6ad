import { InvalidInputError } from '../common/errors.js';
import { ID_BYTES, MANIFEST_ENTRY_BYTES, type ManifestHeader } from './manifest-codec.js';

/**
 * What a commit checks of a manifest beyond its codec (manifest-codec.ts checks shape, counts, the sum of
 * lengths and the trailer): facts only the repository knows, such as each chunk's real length.
 */

/**
 * Unreadable ranges must lie inside the image, each non-empty, in order and without overlapping (adjacent
 * is fine: the agent merges them, an older one may not have). A range outside the image would make a
 * restore report damage that is not there, or hide damage that is.
 */
export function checkUnreadableRanges(header: Pick<ManifestHeader, 'size' | 'unreadable'>): void {
  let end = 0;
  for (const [i, [offset, length]] of header.unreadable.entries()) {
    const what = `bad manifest: unreadable range ${i} [${offset}, ${length}]`;
    if (length === 0) throw new InvalidInputError(`${what} is empty`);
    if (offset + length > header.size)
      throw new InvalidInputError(`${what} ends beyond the image's ${header.size} bytes`);
    if (offset < end)
      throw new InvalidInputError(
        `${what} starts before the end of the previous one (${end}): ranges must be ordered and not overlap`,
      );
    end = offset + length;
  }
}

/** One entry whose length is not its chunk's. */
export interface LengthMismatch {
  /** Position of the entry in the manifest. */
  entry: number;
  chunk: string;
  claimed: number;
  /** The chunk's real length, or undefined when it is not known here. */
  actual: number | undefined;
}

/**
 * The entries of `batch` (36-byte entries, the first being entry `first`) whose length exceeds the chunker's
 * maximum or differs from the chunk's real raw length as `realLength` knows it (undefined: unknown, not
 * judged here).
 */
export function entryLengthMismatches(
  batch: Buffer,
  first: number,
  maxLength: number,
  realLength: (chunk: string) => number | undefined,
): LengthMismatch[] {
  const out: LengthMismatch[] = [];
  for (let at = 0, i = first; at < batch.length; at += MANIFEST_ENTRY_BYTES, i++) {
    const claimed = batch.readUInt32BE(at + ID_BYTES);
    const chunk = batch.toString('hex', at, at + ID_BYTES);
    const actual = realLength(chunk);
    if (claimed > maxLength || (actual !== undefined && actual !== claimed))
      out.push({ entry: i, chunk, claimed, actual });
  }
  return out;
}

export function describeMismatch(m: LengthMismatch, maxLength: number): string {
  if (m.claimed > maxLength)
    return `entry ${m.entry} gives chunk ${m.chunk} ${m.claimed} bytes, more than the chunker maximum ${maxLength}`;
  return `entry ${m.entry} gives chunk ${m.chunk} ${m.claimed} bytes; the chunk is ${m.actual} bytes`;
}
