/** Sizes in binary units with one decimal, as the CLI prints them (20.0 GiB). */
export function bytes(n: number): string {
  if (!Number.isFinite(n)) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = n;
  let u = 0;
  while (Math.abs(v) >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} B` : `${v.toFixed(1)} ${units[u]}`;
}

export function count(n: number): string {
  return n.toLocaleString();
}

export function ratio(r: number): string {
  return Number.isFinite(r) && r > 0 ? `${r.toFixed(2)}×` : '–';
}

/** Local date and time; the UTC form goes in a title so it shows on hover. */
export function localTime(iso: string): string {
  const d = new Date(iso);
  return d.toLocaleString(undefined, {
    year: 'numeric',
    month: 'short',
    day: 'numeric',
    hour: '2-digit',
    minute: '2-digit',
  });
}

export function utcTitle(iso: string): string {
  return `${new Date(iso)
    .toISOString()
    .replace('T', ' ')
    .replace(/\.\d+Z$/, 'Z')} (UTC)`;
}

/** "3 h ago", "2 d 4 h ago": precise enough to see a missed night at a glance. */
export function age(ms: number): string {
  if (ms < 0) return 'in the future';
  const min = Math.floor(ms / 60_000);
  if (min < 60) return `${min} min ago`;
  const hours = Math.floor(min / 60);
  if (hours < 48) return `${hours} h ago`;
  const days = Math.floor(hours / 24);
  return `${days} d ${hours % 24} h ago`;
}

export const shortId = (id: string) => id.slice(0, 12);

/** Hours from a threshold the person typed ("26", "26h", "2d"); undefined when it is not one. */
export function parseHours(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(h|d)?\s*$/i.exec(text);
  if (!m) return undefined;
  const v = Number(m[1]) * (m[2]?.toLowerCase() === 'd' ? 24 : 1);
  return v > 0 ? v : undefined;
}

/** "1 disk", "3 disks". */
export function plural(n: number, word: string): string {
  return `${count(n)} ${word}${n === 1 ? '' : 's'}`;
}
