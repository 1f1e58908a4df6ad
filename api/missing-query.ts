import type { IncomingMessage } from 'node:http';
import { InvalidInputError } from '../common/errors.js';
import { capped, refuseDeclaredOver, requireJsonType } from './body.js';
import { ID_BYTES, MAX_MISSING_IDS } from './protocol.js';

/**
 * The JSON missing query, `{"ids": ["<64 hex>", ...]}`, read without JSON.parse: a scanner checks the shape
 * byte by byte as the body arrives and writes each id straight into a binary buffer (32 bytes an id), so a
 * body of anything else is refused at its first wrong byte, and no request costs more than its ids
 * (at most MAX_MISSING_IDS x 32 bytes) whatever it holds. JSON.parse of a few MiB of `[{},{},...]` builds
 * millions of objects: hundreds of MiB for one request.
 */

/** 50,000 ids of 66 bytes each ("…",) plus room for whitespace between them. */
export const MAX_MISSING_JSON_BYTES = 4 * 1024 * 1024;

const SHAPE = 'a JSON missing query is {"ids": ["<64 lowercase hex>", ...]}';

enum State {
  BeforeObject,
  BeforeKey,
  InKey,
  BeforeColon,
  BeforeArray,
  BeforeFirstId,
  InId,
  AfterId,
  BeforeNextId,
  AfterArray,
  Done,
}

const isSpace = (c: number) => c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;

function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x61 && c <= 0x66) return c - 0x61 + 10;
  return -1;
}

/** Scans one missing query; `push` the body's pieces, then `finish` for the ids (binary, in order). */
export class MissingQueryScanner {
  private state = State.BeforeObject;
  private key = '';
  private ids = Buffer.alloc(64 * ID_BYTES);
  private count = 0;
  /** Hex digits of the id being read. */
  private digits = 0;

  push(piece: Buffer): void {
    for (let i = 0; i < piece.length; i++) this.step(piece[i] as number);
  }

  finish(): Buffer {
    if (this.state !== State.Done) {
      if (this.state === State.BeforeObject) throw new InvalidInputError('ids must be an array');
      throw new InvalidInputError(`the body ends early: ${SHAPE}`);
    }
    return this.ids.subarray(0, this.count * ID_BYTES);
  }

  private step(c: number): void {
    switch (this.state) {
      case State.BeforeObject:
        if (isSpace(c)) return;
        if (c !== 0x7b) throw new InvalidInputError(SHAPE);
        this.state = State.BeforeKey;
        return;
      case State.BeforeKey:
        if (isSpace(c)) return;
        if (c === 0x7d) throw new InvalidInputError('ids must be an array');
        if (c !== 0x22) throw new InvalidInputError(SHAPE);
        this.state = State.InKey;
        return;
      case State.InKey:
        if (c === 0x22) {
          if (this.key !== 'ids') throw new InvalidInputError(SHAPE);
          this.state = State.BeforeColon;
          return;
        }
        this.key += String.fromCharCode(c);
        if (this.key.length > 3) throw new InvalidInputError(SHAPE);
        return;
      case State.BeforeColon:
        if (isSpace(c)) return;
        if (c !== 0x3a) throw new InvalidInputError(SHAPE);
        this.state = State.BeforeArray;
        return;
      case State.BeforeArray:
        if (isSpace(c)) return;
        if (c !== 0x5b) throw new InvalidInputError('ids must be an array');
        this.state = State.BeforeFirstId;
        return;
      case State.BeforeFirstId:
      case State.BeforeNextId:
        if (isSpace(c)) return;
        if (c === 0x5d && this.state === State.BeforeFirstId) {
          this.state = State.AfterArray;
          return;
        }
        if (c !== 0x22) throw new InvalidInputError('every id must be 64 lowercase hex characters');
        this.beginId();
        return;
      case State.InId:
        if (c === 0x22) {
          if (this.digits !== 64) throw new InvalidInputError('every id must be 64 lowercase hex characters');
          this.count++;
          this.state = State.AfterId;
          return;
        }
        this.digit(c);
        return;
      case State.AfterId:
        if (isSpace(c)) return;
        if (c === 0x2c) {
          this.state = State.BeforeNextId;
          return;
        }
        if (c !== 0x5d) throw new InvalidInputError(SHAPE);
        this.state = State.AfterArray;
        return;
      case State.AfterArray:
        if (isSpace(c)) return;
        if (c !== 0x7d) throw new InvalidInputError(SHAPE);
        this.state = State.Done;
        return;
      case State.Done:
        if (!isSpace(c)) throw new InvalidInputError(`bytes after the query: ${SHAPE}`);
        return;
    }
  }

  private beginId(): void {
    if (this.count >= MAX_MISSING_IDS)
      throw new InvalidInputError(`at most ${MAX_MISSING_IDS} ids per query`, { max: MAX_MISSING_IDS });
    const end = (this.count + 1) * ID_BYTES;
    if (end > this.ids.length) {
      const grown = Buffer.alloc(Math.min(MAX_MISSING_IDS * ID_BYTES, this.ids.length * 2));
      this.ids.copy(grown);
      this.ids = grown;
    }
    this.digits = 0;
    this.state = State.InId;
  }

  private digit(c: number): void {
    const v = hexValue(c);
    if (v < 0 || this.digits >= 64)
      throw new InvalidInputError('every id must be 64 lowercase hex characters');
    const at = this.count * ID_BYTES + (this.digits >> 1);
    if ((this.digits & 1) === 0) this.ids[at] = v << 4;
    else this.ids[at] = (this.ids[at] as number) | v;
    this.digits++;
  }
}

/** The ids of a JSON missing query, as consecutive 32-byte binary ids; 413 over MAX_MISSING_JSON_BYTES. */
export async function readJsonMissingQuery(req: IncomingMessage): Promise<Buffer> {
  requireJsonType(req);
  refuseDeclaredOver(req, MAX_MISSING_JSON_BYTES, 'missing query');
  const scanner = new MissingQueryScanner();
  for await (const piece of capped(req, MAX_MISSING_JSON_BYTES, 'missing query')) scanner.push(piece);
  return scanner.finish();
}
