/**
 * Which of fastcdc's cuts over a range [from, to) are the cuts one call over the whole image would make.
 *
 * fastcdc-rs 1.0 decides the chunk starting at s from the bytes after s and from min(remaining, max), where
 * remaining is the number of bytes from s to the end of its input: that bounds the search (source_len2) and,
 * when remaining is short, the first, stricter search phase (center_size). A cut found by the gear hash at
 * b < to was found by scanning bytes [s+min, b) only, under bounds that are no tighter than the whole image's;
 * the whole image's scan, over the same bytes with the same masks, stops at the same byte. So every cut before
 * `to` stands. Only the last chunk, the one ending exactly at `to`, may be an artefact of the range ending
 * there (search cut short, or a chunk of the remaining tail): it stands only when it had a full `max` bytes
 * to search in, or when `to` is the end of the image. Otherwise its bytes are carried into the next range
 * and cut again there, which makes the boundaries identical to one call over the whole image, whatever the
 * window size.
 */
export interface AcceptedCuts {
  /** Chunk end positions (same coordinates as `from`), in order. */
  ends: number[];
  /** Where the first unaccepted chunk starts: the bytes [carryFrom, to) move to the next window. */
  carryFrom: number;
}

/**
 * @param offsets fastcdc's answer for bytes [from, to): 0, each cut, and to - from.
 * @param final true when `to` is the end of the image: then every cut stands.
 */
export function acceptCuts(
  offsets: ArrayLike<number>,
  from: number,
  to: number,
  max: number,
  final: boolean,
): AcceptedCuts {
  const ends: number[] = [];
  let start = from;
  for (let i = 1; i < offsets.length; i++) {
    const end = from + offsets[i];
    if (end === to && !final && to - start < max) break;
    ends.push(end);
    start = end;
  }
  return { ends, carryFrom: start };
}
