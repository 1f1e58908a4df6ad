import { ConfigError } from './cli.js';

// Sizes and addresses as people write them on command lines and in config files.

const SIZE_UNITS: Record<string, number> = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 };

/** "268435456", "256M", "1G", "512MiB", "64k". Binary multiples: cache sizes are memory. */
export function parseSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$/i.exec(text.trim());
  if (!m) throw new ConfigError(`invalid size ${JSON.stringify(text)}: expected a form like 256M or 1G`);
  const n = Math.floor(Number(m[1]) * (SIZE_UNITS[m[2].toUpperCase()] ?? 1));
  if (!Number.isSafeInteger(n)) throw new ConfigError(`size ${text} is out of range`);
  return n;
}

/** HOST:PORT, [IPv6]:PORT or a bare PORT (on 127.0.0.1). */
export function parseListen(text: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(text) ?? /^()()(\d{1,5})$/.exec(text);
  const port = m ? Number(m[3]) : Number.NaN;
  if (!m || port > 65535)
    throw new ConfigError(`invalid --listen ${JSON.stringify(text)}: expected HOST:PORT`);
  return { host: m[1] || m[2] || '127.0.0.1', port };
}

/** Bytes for people, in binary units with one decimal: "512 B", "1.5 MiB", "78.1 KiB". */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(u === 0 ? 0 : 1)} ${units[u]}`;
}
