/**
 * FastCDC decides a cut from the bytes after the previous cut, but only up to `max` of them; it also shortens
 * its search when fewer than `max` bytes remain. So a chunk that starts less than `max` bytes before the end
 * of a read window might be cut differently once the next window arrives. Such chunks are not accepted:
 * their bytes are carried into the next window and cut again there, which makes the boundaries identical to
 * one call over the whole image, whatever the window size.
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
    if (!final && to - start < max) break;
    ends.push(end);
    start = end;
  }
  return { ends, carryFrom: start };
}
