/**
 * The error codes of diskvault's one family of typed errors, each with the HTTP status the server answers
 * it with. The server maps a code to its status here and the agent maps a status back to a code here, so
 * the two cannot drift apart.
 */
export const ERROR_STATUS = {
  InvalidInput: 400,
  Unauthorized: 401,
  Forbidden: 403,
  NotFound: 404,
  Conflict: 409,
  TooLarge: 413,
  HashMismatch: 422,
  // Corrupt names the damaged chunk or manifest: the operator needs that, and it reveals nothing internal.
  Corrupt: 500,
  Unavailable: 503,
  // A per-token limit (open sessions, snapshot leases); the answer carries Retry-After.
  TooManyRequests: 429,
  StorageFull: 507,
} as const;

export type ErrorCode = keyof typeof ERROR_STATUS;

export const ERROR_CODES = Object.keys(ERROR_STATUS) as ErrorCode[];

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && Object.hasOwn(ERROR_STATUS, value);
}

/**
 * The code a client assumes for an error answer without a known code in its body (a proxy's page, an older
 * server): the code whose status it is, and Unavailable for any other status (500 included: retrying or
 * reporting it as the server's trouble is right, calling it Corrupt is not).
 */
export function codeForStatus(status: number): ErrorCode {
  const code = ERROR_CODES.find((c) => ERROR_STATUS[c] === status);
  return code && code !== 'Corrupt' ? code : 'Unavailable';
}

/**
 * The one family of typed errors diskvault raises. It lives in the neutral layer so that no import points
 * upward: storage, engine, API and agent all throw these; `api/` maps `code` to an HTTP status through
 * ERROR_STATUS and the CLI maps it to an exit code in one place. "Not found" for a single lookup is usually
 * a value (undefined), but where an operation cannot continue it is this NotFound error.
 */
export class DiskvaultError extends Error {
  readonly code: ErrorCode;
  /** Extra machine-readable facts (for example the ids a commit found missing). */
  readonly details?: Record<string, unknown>;
  constructor(
    code: ErrorCode,
    message: string,
    details?: Record<string, unknown>,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = `${code}Error`;
    this.code = code;
    this.details = details;
  }
}

export class NotFoundError extends DiskvaultError {
  constructor(message: string, details?: Record<string, unknown>) {
    super('NotFound', message, details);
  }
}
export class HashMismatchError extends DiskvaultError {
  constructor(message: string, details?: Record<string, unknown>) {
    super('HashMismatch', message, details);
  }
}
export class StorageFullError extends DiskvaultError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('StorageFull', message, undefined, options);
  }
}
export class ConflictError extends DiskvaultError {
  constructor(message: string, details?: Record<string, unknown>) {
    super('Conflict', message, details);
  }
}
export class InvalidInputError extends DiskvaultError {
  constructor(message: string, details?: Record<string, unknown>) {
    super('InvalidInput', message, details);
  }
}
export class CorruptError extends DiskvaultError {
  constructor(message: string, details?: Record<string, unknown>) {
    super('Corrupt', message, details);
  }
}

export function isDiskvaultError(err: unknown): err is DiskvaultError {
  return err instanceof DiskvaultError;
}

/**
 * ENOSPC and EDQUOT both mean "the disk is full" to an operator, and so does SQLITE_FULL: the index's
 * database could not grow (SQLite rolls the statement back).
 */
export function isNoSpace(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code === 'ENOSPC' || code === 'EDQUOT' || code === 'SQLITE_FULL';
}
