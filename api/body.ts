import type { IncomingMessage } from 'node:http';
import { InvalidInputError } from '../common/errors.js';
import type { BufferAllocator } from '../storage-adapters/adapter.js';
import { tooLarge } from './errors.js';

/**
 * Request bodies, read by hand (restify's body parser is not used): every body has a hard byte cap that
 * holds with or without Content-Length, and a declared length over the cap is refused before one byte of
 * the body is read.
 */
export function declaredLength(req: IncomingMessage): number | undefined {
  const h = req.headers['content-length'];
  if (h === undefined) return undefined;
  const n = Number(h);
  if (!/^\d+$/.test(h) || !Number.isSafeInteger(n)) throw new InvalidInputError('bad Content-Length');
  return n;
}

export function refuseDeclaredOver(req: IncomingMessage, cap: number, what: string): void {
  const n = declaredLength(req);
  if (n !== undefined && n > cap) throw tooLarge(`${what} of ${n} bytes exceeds the limit of ${cap} bytes`);
}

/**
 * The whole body as one Buffer; only for bodies whose cap is small enough to hold (a chunk, a JSON request).
 * With `alloc`, a body of declared length is read into the buffer it returns (a recycled one) instead of a
 * new one.
 */
export async function readCapped(
  req: IncomingMessage,
  cap: number,
  what: string,
  alloc?: BufferAllocator,
): Promise<Buffer> {
  refuseDeclaredOver(req, cap, what);
  const declared = declaredLength(req);
  if (alloc && declared !== undefined) {
    const out = alloc(declared);
    let at = 0;
    // The HTTP parser never passes more than Content-Length bytes: a longer body is the next request.
    for await (const piece of capped(req, declared, what)) at += piece.copy(out, at);
    return out.subarray(0, at);
  }
  const parts: Buffer[] = [];
  let total = 0;
  for await (const piece of capped(req, cap, what)) {
    parts.push(piece);
    total += piece.length;
  }
  return parts.length === 1 ? parts[0] : Buffer.concat(parts, total);
}

/** Passes the body through and throws TooLarge as soon as it goes past `cap`, whatever the headers said. */
export async function* capped(req: IncomingMessage, cap: number, what: string): AsyncGenerator<Buffer> {
  let total = 0;
  // destroyOnReturn false: stopping early must leave the socket alive so the 413 can still be sent.
  for await (const piece of req.iterator({ destroyOnReturn: false }) as AsyncIterable<Buffer>) {
    total += piece.length;
    if (total > cap) throw tooLarge(`${what} exceeds the limit of ${cap} bytes`);
    yield piece;
  }
}

/**
 * JSON bodies are settings (a session's host and disk, a forget policy), a few hundred bytes. The cap bounds
 * what JSON.parse may build for one request: 64 KiB of `[{},{},...]` is about 22,000 objects, a few MiB
 * for a moment, where 8 MiB of it were over 100 MiB. The one large JSON body, the missing query, is not
 * parsed this way (api/missing-query.ts).
 */
export const MAX_JSON_BYTES = 64 * 1024;

export function requireJsonType(req: IncomingMessage): void {
  const type = req.headers['content-type'];
  if (type !== undefined && !/^application\/json\s*(;|$)/i.test(type)) {
    throw new InvalidInputError('the body must be application/json');
  }
}

export async function readJson(req: IncomingMessage, cap = MAX_JSON_BYTES): Promise<unknown> {
  requireJsonType(req);
  const bytes = await readCapped(req, cap, 'request body');
  if (bytes.length === 0) return {};
  try {
    return JSON.parse(bytes.toString('utf8'));
  } catch {
    throw new InvalidInputError('the body is not valid JSON');
  }
}
