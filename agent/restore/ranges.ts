/** [offset, length] byte ranges, as the manifest's `unreadable` and the restore's `damaged` lists use. */
export type ByteRange = [number, number];

/** Appends a range, merging it with the last one when they touch (ranges arrive in image order). */
export function appendRange(ranges: ByteRange[], offset: number, length: number): void {
  const last = ranges[ranges.length - 1];
  if (last && last[0] + last[1] === offset) last[1] += length;
  else ranges.push([offset, length]);
}

export function formatRange([offset, length]: ByteRange): string {
  return `[${offset}, ${length}] (bytes ${offset}..${offset + length - 1})`;
}

export function totalLength(ranges: ByteRange[]): number {
  return ranges.reduce((sum, r) => sum + r[1], 0);
}
