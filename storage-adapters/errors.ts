/**
 * The one family of typed errors diskvault raises. It lives in the lowest layer so that no import points
 * upward: storage, engine, API and agent all throw these. Every layer throws these; `api/` maps `code` to an HTTP
 * status in one place and the CLI maps it to an exit code in one place. "Not found" for a single lookup is
 * usually a value (undefined), but where an operation cannot continue it is this NotFound error.
 */
export type ErrorCode =
  | 'NotFound'
  | 'HashMismatch'
  | 'StorageFull'
  | 'Conflict'
  | 'InvalidInput'
  | 'Unauthorized'
  | 'Forbidden'
  | 'TooLarge'
  | 'Corrupt'
  | 'Unavailable'
  | 'TooManyRequests';

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

/** ENOSPC and EDQUOT both mean "the disk is full" to an operator. */
export function isNoSpace(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code === 'ENOSPC' || code === 'EDQUOT';
}
