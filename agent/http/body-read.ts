import type { Readable } from 'node:stream';
import type { ErrorBody } from '../../api/protocol.js';
import { codeForStatus, DiskvaultError, isErrorCode } from '../../common/errors.js';
import type { BufferAllocator } from '../../storage-adapters/adapter.js';
import type { Response } from './transport.js';

/**
 * A response body of at most `cap` bytes, read into one buffer sized by Content-Length when the server sent
 * one (no concatenation copy); refused as Corrupt as soon as it would exceed `cap` or its announced length.
 */
export async function readBounded(
  res: Response,
  cap: number,
  what: string,
  alloc: BufferAllocator = Buffer.allocUnsafe,
): Promise<Buffer> {
  const declared =
    res.headers['content-length'] === undefined ? undefined : Number(res.headers['content-length']);
  const tooBig = (n: number) =>
    new DiskvaultError('Corrupt', `${what}: the server sent ${n} bytes or more, at most ${cap} expected`);
  if (declared !== undefined && (!Number.isSafeInteger(declared) || declared < 0 || declared > cap)) {
    res.stream.destroy();
    throw tooBig(declared);
  }
  if (declared !== undefined) {
    const out = alloc(declared);
    let at = 0;
    for await (const p of res.stream) {
      const part = p as Buffer;
      if (at + part.length > declared) {
        res.stream.destroy();
        throw new DiskvaultError(
          'Corrupt',
          `${what}: the server sent more than its announced ${declared} bytes`,
        );
      }
      part.copy(out, at);
      at += part.length;
    }
    if (at !== declared)
      throw new DiskvaultError(
        'Unavailable',
        `${what}: the connection ended after ${at} of ${declared} bytes`,
      );
    return out;
  }
  const parts: Buffer[] = [];
  let total = 0;
  for await (const p of res.stream) {
    total += (p as Buffer).length;
    if (total > cap) {
      res.stream.destroy();
      throw tooBig(total);
    }
    parts.push(p as Buffer);
  }
  return Buffer.concat(parts, total);
}

async function readAll(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const p of stream) parts.push(p as Buffer);
  return Buffer.concat(parts);
}

/** A JSON response body; an empty one reads as {}. */
export async function readJson(res: Response): Promise<unknown> {
  const text = (await readAll(res.stream)).toString('utf8');
  if (text === '') return {};
  try {
    return JSON.parse(text);
  } catch {
    throw new DiskvaultError('Unavailable', `server sent a response that is not JSON (status ${res.status})`);
  }
}

/** Turns a non-2xx response into the DiskvaultError the server meant, keeping its message and details. */
export async function errorFrom(res: Response): Promise<DiskvaultError> {
  let body: Partial<ErrorBody> = {};
  try {
    const text = (await readAll(res.stream)).toString('utf8');
    body = text ? (JSON.parse(text) as Partial<ErrorBody>) : {};
  } catch {
    body = {};
  }
  const code = isErrorCode(body.code) ? body.code : codeForStatus(res.status);
  const message =
    typeof body.message === 'string' && body.message ? body.message : `server answered HTTP ${res.status}`;
  return new DiskvaultError(code, message, { status: res.status, ...(body.details ?? {}) });
}
