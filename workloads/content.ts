import { gzipSync } from 'node:zlib';
import { noise, Rng } from './random.js';

// The contents a used Linux disk holds, generated: prose and source code, configuration, logs, compiled
// binaries, compressed archives and media, database pages. Each kind compresses and deduplicates roughly as
// the real thing does, which is what a backup of the disk is sensitive to; none is copied from this machine.

const SYLLABLES = [
  'al',
  'an',
  'ar',
  'ba',
  'be',
  'ca',
  'co',
  'con',
  'de',
  'di',
  'en',
  'er',
  'es',
  'ex',
  'fi',
  'ga',
  'in',
  'io',
  'is',
  'ka',
  'la',
  'le',
  'li',
  'lo',
  'ma',
  'me',
  'mi',
  'mo',
  'na',
  'ne',
  'no',
  'on',
  'or',
  'pa',
  'pe',
  'po',
  'pro',
  'ra',
  're',
  'ri',
  'ro',
  'sa',
  'se',
  'si',
  'so',
  'ta',
  'te',
  'ti',
  'to',
  'tr',
  'un',
  'ur',
  'va',
  've',
  'vi',
  'za',
];

/** A language's worth of words, most frequent first, made once per seed. */
export class Vocabulary {
  readonly words: string[];

  constructor(seed: number | string, size = 6000) {
    const rng = new Rng(seed, 'vocabulary');
    const seen = new Set<string>();
    const short = ['a', 'the', 'of', 'to', 'and', 'in', 'is', 'for', 'on', 'with', 'by', 'it', 'be', 'as'];
    for (const w of short) seen.add(w);
    while (seen.size < size) {
      const n = rng.int(1, 4);
      let w = '';
      for (let i = 0; i < n; i++) w += rng.pick(SYLLABLES);
      seen.add(w);
    }
    this.words = [...seen];
  }

  word(rng: Rng): string {
    return this.words[rng.zipf(this.words.length)];
  }

  identifier(rng: Rng): string {
    return rng.chance(0.5) ? this.word(rng) : `${this.word(rng)}_${this.word(rng)}`;
  }
}

/** Appends pieces until `size` bytes, then cuts there (a file's size is its own, not a whole line's). */
function fill(size: number, piece: () => string): Buffer {
  const parts: string[] = [];
  let length = 0;
  while (length < size) {
    const p = piece();
    parts.push(p);
    length += p.length;
  }
  return Buffer.from(parts.join(''), 'latin1').subarray(0, size);
}

function sentence(vocab: Vocabulary, rng: Rng): string {
  const n = rng.int(5, 18);
  const words: string[] = [];
  for (let i = 0; i < n; i++) words.push(vocab.word(rng));
  const s = words.join(' ');
  return `${s[0].toUpperCase()}${s.slice(1)}. `;
}

/** Documentation: paragraphs of prose wrapped at 72 columns, with headings. Compresses about 3:1. */
export function prose(vocab: Vocabulary, rng: Rng, size: number): Buffer {
  return fill(size, () => {
    let para = rng.chance(0.15)
      ? `\n${vocab.word(rng).toUpperCase()} ${vocab.word(rng).toUpperCase()}\n\n`
      : '';
    let line = '';
    const sentences = rng.int(2, 7);
    for (let i = 0; i < sentences; i++) {
      for (const w of sentence(vocab, rng).split(' ')) {
        if (line.length + w.length > 72) {
          para += `${line.trimEnd()}\n`;
          line = '';
        }
        line += `${w} `;
      }
    }
    return `${para}${line.trimEnd()}\n\n`;
  });
}

/** Source code in a Python-like shape: imports, classes, functions, indented bodies. */
export function sourceCode(vocab: Vocabulary, rng: Rng, size: number): Buffer {
  return fill(size, () => {
    const r = rng.next();
    if (r < 0.08)
      return `import ${vocab.identifier(rng)}\nfrom ${vocab.word(rng)} import ${vocab.identifier(rng)}\n`;
    if (r < 0.2)
      return `\n\nclass ${vocab.word(rng)[0].toUpperCase()}${vocab.word(rng)}(object):\n    """${sentence(vocab, rng)}"""\n`;
    const name = vocab.identifier(rng);
    const args = Array.from({ length: rng.int(0, 4) }, () => vocab.word(rng)).join(', ');
    let body = `\n    def ${name}(self${args ? `, ${args}` : ''}):\n`;
    const lines = rng.int(2, 12);
    for (let i = 0; i < lines; i++) {
      const k = rng.next();
      const a = vocab.identifier(rng);
      if (k < 0.3)
        body += `        ${a} = self.${vocab.identifier(rng)}(${vocab.word(rng)}, ${rng.int(0, 4096)})\n`;
      else if (k < 0.5)
        body += `        if ${a} is None:\n            raise ValueError("${sentence(vocab, rng).trim()}")\n`;
      else if (k < 0.65) body += `        # ${sentence(vocab, rng).trim()}\n`;
      else if (k < 0.8)
        body += `        for ${vocab.word(rng)} in ${a}:\n            ${vocab.identifier(rng)}.append(${vocab.word(rng)})\n`;
      else body += `        return ${a}\n`;
    }
    return body;
  });
}

/** A configuration file: sections and key = value lines. */
export function configFile(vocab: Vocabulary, rng: Rng, size: number): Buffer {
  return fill(size, () => {
    if (rng.chance(0.1)) return `\n[${vocab.word(rng)}]\n`;
    if (rng.chance(0.1)) return `# ${sentence(vocab, rng).trim()}\n`;
    const v = rng.chance(0.5)
      ? String(rng.int(0, 65535))
      : rng.chance(0.5)
        ? vocab.word(rng)
        : rng.pick(['yes', 'no', 'true', 'false']);
    return `${vocab.identifier(rng)} = ${v}\n`;
  });
}

const DAEMONS = ['systemd', 'CRON', 'sshd', 'kernel', 'nginx', 'postgres', 'dhclient', 'rsyslogd', 'dockerd'];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

function syslogTime(t: Date): string {
  const d = String(t.getUTCDate()).padStart(2, ' ');
  return `${MONTHS[t.getUTCMonth()]} ${d} ${t.toISOString().slice(11, 19)}`;
}

/** A syslog of one day from `start`: timestamped lines from a few daemons, very repetitive (about 8:1). */
export function syslog(vocab: Vocabulary, rng: Rng, size: number, start: Date, host: string): Buffer {
  let t = start.getTime();
  return fill(size, () => {
    t += rng.int(0, 9000);
    const daemon = rng.pick(DAEMONS);
    const pid = daemon === 'kernel' ? '' : `[${rng.int(300, 99999)}]`;
    const r = rng.next();
    let msg: string;
    if (r < 0.3) msg = `(root) CMD (run-parts /etc/cron.hourly)`;
    else if (r < 0.5)
      msg = `Started ${vocab.word(rng)}-${vocab.word(rng)}.service - ${sentence(vocab, rng).trim()}`;
    else if (r < 0.65)
      msg = `Accepted publickey for ${vocab.word(rng)} from 10.${rng.int(0, 255)}.${rng.int(0, 255)}.${rng.int(1, 254)} port ${rng.int(1024, 65535)} ssh2`;
    else if (r < 0.75)
      msg = `[${(rng.next() * 100000).toFixed(6)}] ${vocab.word(rng)}: ${sentence(vocab, rng).trim()}`;
    else msg = sentence(vocab, rng).trim();
    return `${syslogTime(new Date(t))} ${host} ${daemon}${pid}: ${msg}\n`;
  });
}

/** A web server's access log (combined format) from `start`. */
export function accessLog(vocab: Vocabulary, rng: Rng, size: number, start: Date): Buffer {
  let t = start.getTime();
  const agents = [
    'Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0',
    'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36',
    'curl/8.5.0',
    'Prometheus/2.51.0',
  ];
  return fill(size, () => {
    t += rng.int(0, 2000);
    const ip = `${rng.int(1, 223)}.${rng.int(0, 255)}.${rng.int(0, 255)}.${rng.int(1, 254)}`;
    const path = `/${vocab.word(rng)}/${vocab.word(rng)}${rng.chance(0.3) ? `?id=${rng.int(1, 99999)}` : ''}`;
    const when = new Date(t).toISOString().replace('T', ':').slice(0, 19);
    const status = rng.pick([200, 200, 200, 200, 304, 301, 404, 500]);
    return `${ip} - - [${when} +0000] "${rng.pick(['GET', 'GET', 'GET', 'POST'])} ${path} HTTP/1.1" ${status} ${rng.int(0, 60000)} "-" "${rng.pick(agents)}"\n`;
  });
}

/**
 * A compiled program or library: machine code (a skewed byte distribution with repeated instruction
 * sequences), a string table, a symbol table and zero padding to page boundaries, behind an ELF header.
 * Compresses about 2:1 to 3:1, as binaries do.
 */
export function binary(vocab: Vocabulary, seed: number | string, label: string, size: number): Buffer {
  const rng = new Rng(seed, `binary:${label}`);
  const out = Buffer.alloc(size);
  const header = Buffer.from('7f454c4602010100000000000000000003003e0001000000', 'hex');
  header.copy(out, 0, 0, Math.min(size, header.length));
  // Machine code: a few hundred common opcodes dominate real code; map noise through a skewed table.
  const table = new Uint8Array(256);
  const common = [
    0x48, 0x89, 0x8b, 0x00, 0xe8, 0x0f, 0x85, 0x84, 0xc3, 0x24, 0x44, 0x41, 0x45, 0x31, 0xff, 0x83,
  ];
  for (let i = 0; i < 256; i++) table[i] = i < 128 ? common[i % common.length] : rng.int(0, 255);
  const codeEnd = Math.floor((size * rng.int(55, 70)) / 100);
  const raw = noise(seed, `binary:${label}`, codeEnd);
  let at = Math.min(size, 64);
  while (at < codeEnd) {
    if (at > 4096 && rng.chance(0.25)) {
      // A repeated sequence (prologues, inlined helpers): what makes code compress.
      const len = Math.min(rng.int(8, 96), codeEnd - at);
      const from = at - rng.int(len, Math.min(at, 32768));
      out.copy(out, at, from, from + len);
      at += len;
    } else {
      const len = rng.int(16, 128);
      for (let i = 0; i < len && at < codeEnd; i++, at++) out[at] = table[raw[at]];
    }
  }
  // Padding to the next page, then strings, then symbols.
  at = Math.min(size, Math.ceil(codeEnd / 4096) * 4096);
  const stringsEnd = Math.min(size, at + Math.floor((size - at) * 0.6));
  while (at < stringsEnd) {
    const s = Buffer.from(`${vocab.identifier(rng)}${rng.chance(0.3) ? `@GLIBC_2.${rng.int(2, 38)}` : ''}\0`);
    at += s.copy(out, at, 0, Math.min(s.length, stringsEnd - at));
  }
  while (at + 24 <= size) {
    out.writeUInt32LE(rng.int(0, stringsEnd), at);
    out[at + 4] = rng.pick([0x12, 0x11, 0x22]);
    out.writeUInt16LE(rng.int(1, 30), at + 6);
    out.writeBigUInt64LE(BigInt(rng.int(0, codeEnd)), at + 8);
    out.writeBigUInt64LE(BigInt(rng.int(0, 4096)), at + 16);
    at += 24;
  }
  return out;
}

/**
 * The next version of a binary, as a package upgrade ships it: most of it unchanged, some regions rebuilt,
 * and code inserted or removed so that everything after moves (content-defined chunking must find the rest).
 */
export function upgradeBinary(old: Buffer, seed: number | string, label: string): Buffer {
  const rng = new Rng(seed, `upgrade:${label}`);
  const parts: Buffer[] = [];
  let at = 0;
  const edits = rng.int(1, 6);
  const cuts = Array.from({ length: edits }, () => rng.int(0, old.length)).sort((a, b) => a - b);
  for (const [i, cut] of cuts.entries()) {
    if (cut < at) continue; // inside a region an earlier edit removed
    parts.push(old.subarray(at, cut));
    const kind = rng.next();
    const len = rng.int(64, 16384);
    const fresh = noise(seed, `upgrade:${label}:${i}`, len);
    if (kind < 0.4) {
      parts.push(fresh); // inserted code
      at = cut;
    } else if (kind < 0.7) {
      at = Math.min(old.length, cut + len); // removed code
    } else {
      const n = Math.min(len, old.length - cut); // rebuilt in place
      parts.push(fresh.subarray(0, n));
      at = cut + n;
    }
  }
  parts.push(old.subarray(at));
  return Buffer.concat(parts);
}

/** A JPEG-like photo or video: a small header, then incompressible data. */
export function media(seed: number | string, label: string, size: number): Buffer {
  const out = noise(seed, `media:${label}`, size);
  Buffer.from('ffd8ffe000104a46494600010101004800480000', 'hex').copy(out, 0);
  return out;
}

/** A gzip archive of generated text: real deflate output, as logs rotated or packages downloaded are. */
export function gzipOf(text: Buffer): Buffer {
  return gzipSync(text, { level: 6 });
}

export const DB_PAGE = 8192;

/**
 * One page of a database table: a header with the page number and a change counter, row pointers, rows of
 * text and numbers packed from the end, and zeros between them. A page rewritten on a later night keeps its
 * number and changes its rows, as an UPDATE does.
 */
export function dbPage(vocab: Vocabulary, seed: number | string, page: number, version: number): Buffer {
  const rng = new Rng(seed, `db:${page}:${version}`);
  const out = Buffer.alloc(DB_PAGE);
  out.write('DVPG', 0, 'latin1');
  out.writeUInt32LE(page, 4);
  out.writeUInt32LE(version, 8);
  let slot = 16;
  let end = DB_PAGE;
  for (;;) {
    const row = Buffer.from(
      `${rng.int(1, 1e9)}|${vocab.word(rng)} ${vocab.word(rng)}|${vocab.word(rng)}@${vocab.word(rng)}.example|${rng.int(0, 1e6) / 100}|${sentence(vocab, rng).trim()}`,
      'latin1',
    );
    if (end - row.length < slot + 4 + 512 * rng.next()) break;
    end -= row.length;
    row.copy(out, end);
    out.writeUInt16LE(end, slot);
    out.writeUInt16LE(row.length, slot + 2);
    slot += 4;
  }
  out.writeUInt16LE((slot - 16) / 4, 12);
  return out;
}
