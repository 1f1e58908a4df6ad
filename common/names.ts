import { InvalidInputError } from './errors.js';

/** Host, disk and tenant names: what a hostname or a device name can be, and nothing that can traverse a path. */
export const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
export const TAG_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:=@+-]{0,127}$/;

/**
 * What is wrong with `value` as the name `what` (for example "host name" or "--disk"), in the one wording
 * every layer uses; undefined when it is a valid name.
 */
export function nameProblem(what: string, value: unknown): string | undefined {
  if (typeof value === 'string' && NAME_PATTERN.test(value)) return undefined;
  return `${what} ${JSON.stringify(String(value).slice(0, 80))} is invalid: letters, digits, '.', '_' and '-', starting with a letter or digit, up to 128`;
}

/** `value` when it is a valid name; InvalidInputError saying why otherwise. */
export function checkName(what: string, value: unknown): string {
  const problem = nameProblem(what, value);
  if (problem) throw new InvalidInputError(problem);
  return value as string;
}
