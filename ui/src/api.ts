/**
 * The console's only way to the server: /v1 on the same origin, with the token the person typed in, sent
 * as a bearer header (never in a URL). Errors come back as ApiError carrying the server's {code, message}.
 */
import type { Job } from './types.js';

const TOKEN_KEY = 'diskvault.token';

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export const session = {
  get token(): string | null {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  save(token: string): void {
    sessionStorage.setItem(TOKEN_KEY, token);
  },
  clear(): void {
    sessionStorage.removeItem(TOKEN_KEY);
  },
};

/** Called when the server stops accepting the session's token (revoked meanwhile). */
let onUnauthorized: () => void = () => {};
export function whenUnauthorized(fn: () => void): void {
  onUnauthorized = fn;
}

export async function call<T>(
  method: 'GET' | 'POST' | 'DELETE',
  path: string,
  body?: unknown,
  token = session.token,
): Promise<T> {
  const headers: Record<string, string> = { accept: 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  let res: Response;
  try {
    res = await fetch(path, {
      method,
      headers,
      credentials: 'omit',
      cache: 'no-store',
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
  } catch {
    throw new ApiError(0, 'Network', 'the server cannot be reached');
  }
  if (res.status === 204) return undefined as T;
  const text = await res.text();
  let parsed: unknown;
  try {
    parsed = text ? JSON.parse(text) : undefined;
  } catch {
    throw new ApiError(
      res.status,
      'BadResponse',
      `the server answered ${res.status} with something that is not JSON`,
    );
  }
  if (!res.ok) {
    const e = parsed as { code?: string; message?: string } | undefined;
    const err = new ApiError(res.status, e?.code ?? 'Error', e?.message ?? `HTTP ${res.status}`);
    if (res.status === 401 && token === session.token) onUnauthorized();
    throw err;
  }
  return parsed as T;
}

export const get = <T>(path: string) => call<T>('GET', path);

/**
 * Starts a long operation the server runs as a job (gc, forget with prune: 202 {job}) and polls it every
 * half second until it ends; `onProgress` sees each running state. Resolves to the job's result, or to the
 * whole answer when the server answered at once without a job.
 */
export async function runJob<T>(
  path: string,
  body: unknown,
  onProgress: (job: Job) => void = () => {},
): Promise<T> {
  const answer = await post<{ job?: Job } & T>(path, body);
  let job = answer.job;
  if (!job) return answer;
  while (job.state === 'running') {
    onProgress(job);
    await new Promise((r) => setTimeout(r, 500));
    job = (await get<{ job: Job }>(`/v1/jobs/${job.id}`)).job;
  }
  if (job.state === 'failed')
    throw new ApiError(500, job.error?.code ?? 'Error', job.error?.message ?? 'the job failed');
  return job.result as unknown as T;
}
export const post = <T>(path: string, body: unknown = {}) => call<T>('POST', path, body);
export const del = (path: string) => call<void>('DELETE', path);

export function query(params: Record<string, string | undefined>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v) q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : '';
}
