import type { ServerResponse } from 'node:http';
import {
  DiskvaultError,
  ERROR_STATUS,
  type ErrorCode,
  isDiskvaultError,
  isNoSpace,
} from '../common/errors.js';
import type { ErrorBody } from './protocol.js';

const STATUS: Record<ErrorCode, number> = ERROR_STATUS;

/**
 * Where error codes become HTTP statuses (common/errors.ts holds the table). Everything the server answers
 * with an error goes through `errorResponse`, so a client sees `{code, message, details?}` and never a
 * stack trace.
 */
export function statusFor(code: ErrorCode): number {
  return STATUS[code] ?? 500;
}

export interface HttpError {
  status: number;
  body: ErrorBody;
  /** True when the real error must go to the log because the client only got a generic message. */
  internal: boolean;
}

export function errorResponse(err: unknown): HttpError {
  if (isDiskvaultError(err) && err.code in STATUS) {
    const body: ErrorBody = { code: err.code, message: err.message };
    if (err.details) body.details = err.details;
    return { status: STATUS[err.code], body, internal: err.code === 'Corrupt' };
  }
  // A full disk met outside the storage adapter (the index's database, a spool file) is still a full disk
  // to the client, which then stops at once instead of retrying; the log keeps the error itself.
  if (isNoSpace(err))
    return {
      status: STATUS.StorageFull,
      body: { code: 'StorageFull', message: "the server's disk is full" },
      internal: true,
    };
  return { status: 500, body: { code: 'Internal', message: 'internal server error' }, internal: true };
}

/** The client went away mid-request: nothing failed on our side, and nobody is left to answer. */
function isClientAbort(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return (
    code === 'ECONNRESET' ||
    code === 'ERR_STREAM_PREMATURE_CLOSE' ||
    code === 'EPIPE' ||
    (err as Error)?.message === 'aborted'
  );
}

/** Writes the error unless a response is already under way; then the only honest thing is to cut the connection. */
export function sendError(res: ServerResponse, err: unknown, log: (line: string) => void): void {
  if (isClientAbort(err)) {
    log(JSON.stringify({ level: 'info', msg: 'client closed the connection mid-request', status: 499 }));
    res.destroy();
    return;
  }
  const { status, body, internal } = errorResponse(err);
  if (internal) log(JSON.stringify({ level: 'error', msg: 'request failed', error: describe(err) }));
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const text = JSON.stringify(body);
  res.statusCode = status;
  res.setHeader('content-type', 'application/json');
  res.setHeader('content-length', Buffer.byteLength(text));
  res.end(text);
}

export function describe(err: unknown): string {
  const e = err as Error | undefined;
  return e?.stack ?? String(err);
}

export const unauthorized = (message = 'missing, malformed or revoked token') =>
  new DiskvaultError('Unauthorized', message);
export const forbidden = (message: string) => new DiskvaultError('Forbidden', message);
export const tooLarge = (message: string) => new DiskvaultError('TooLarge', message);
