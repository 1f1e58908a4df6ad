/**
 * What a `Range` header asks of an image of `size` bytes (RFC 9110 section 14): the whole image, one range
 * [start, end), or nothing that exists (416). Only single byte ranges are served: a syntactically invalid
 * header or a multi-range request is ignored and the whole image is sent, which the RFC allows and every
 * client handles (curl, qemu and browsers only ever ask for one range).
 */
export type RangeRequest =
  | { kind: 'whole' }
  | { kind: 'range'; start: number; end: number }
  | { kind: 'unsatisfiable' };

const SINGLE_RANGE = /^bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$/i;

export function parseRange(header: string | undefined, size: number): RangeRequest {
  if (header === undefined) return { kind: 'whole' };
  const m = SINGLE_RANGE.exec(header.trim());
  if (!m) return { kind: 'whole' };
  const [, first, last] = m;
  if (first === '' && last === '') return { kind: 'whole' };
  if (first === '') {
    // A suffix: the last N bytes.
    const n = Number(last);
    if (n === 0 || size === 0) return { kind: 'unsatisfiable' };
    return { kind: 'range', start: Math.max(0, size - Math.min(n, size)), end: size };
  }
  const start = Number(first);
  if (!Number.isSafeInteger(start) || start >= size) return { kind: 'unsatisfiable' };
  if (last === '') return { kind: 'range', start, end: size };
  const lastByte = Number(last);
  // last < first makes the header invalid, so it is ignored.
  if (lastByte < start) return { kind: 'whole' };
  return { kind: 'range', start, end: Math.min(size, lastByte + 1) };
}
