import { createHash } from 'node:crypto';
import { compress } from 'zstd-napi';
import { MANIFEST_CONTENT_TYPE } from '../../api/protocol.js';
import { encodeManifest, type ManifestHeader } from '../../repo-engine/manifest-codec.js';
import { TEST_CHUNKER } from './server.js';

/** A minimal fetch-based client for API tests: every answer as {status, headers, json?, bytes}. */
export interface Answer {
  status: number;
  headers: Headers;
  bytes: Buffer;
  // biome-ignore lint/suspicious/noExplicitAny: test answers are inspected field by field
  json: any;
}

export async function call(
  url: string,
  token: string | undefined,
  method: string,
  path: string,
  opts: { json?: unknown; body?: Buffer; headers?: Record<string, string> } = {},
): Promise<Answer> {
  const headers: Record<string, string> = {
    ...(token ? { authorization: `Bearer ${token}` } : {}),
    ...opts.headers,
  };
  let body: Buffer | string | undefined;
  if (opts.json !== undefined) {
    headers['content-type'] ??= 'application/json';
    body = JSON.stringify(opts.json);
  } else if (opts.body) body = opts.body;
  const res = await fetch(`${url}${path}`, {
    method,
    headers,
    ...(body !== undefined ? { body: body as BodyInit } : {}),
  });
  const bytes = Buffer.from(await res.arrayBuffer());
  let json: unknown;
  if ((res.headers.get('content-type') ?? '').includes('json') && bytes.length)
    json = JSON.parse(bytes.toString('utf8'));
  return { status: res.status, headers: res.headers, bytes, json };
}

export interface TestChunk {
  id: string;
  data: Buffer;
}

/** Deterministic pseudo-random bytes: the same seed gives the same chunk (dedup tests rely on it). */
export function chunkOf(seed: string, size = 40_000): TestChunk {
  const data = Buffer.alloc(size);
  let block = createHash('sha256').update(seed).digest();
  for (let at = 0; at < size; at += 32) {
    block.copy(data, at);
    block = createHash('sha256').update(block).digest();
  }
  return { id: createHash('sha256').update(data).digest('hex'), data };
}

export function manifestFor(
  host: string,
  disk: string,
  chunks: TestChunk[],
  extra: Partial<ManifestHeader> = {},
): Buffer {
  const image = createHash('sha256');
  let size = 0;
  for (const c of chunks) {
    image.update(c.data);
    size += c.data.length;
  }
  const header: ManifestHeader = {
    formatVersion: 1,
    host,
    disk,
    time: new Date().toISOString(),
    size,
    sha256: image.digest('hex'),
    chunker: TEST_CHUNKER,
    tags: [],
    unreadable: [],
    sourceFormat: 'raw',
    chunkCount: chunks.length,
    ...extra,
  };
  return encodeManifest(
    header,
    chunks.map((c) => ({ id: c.id, length: c.data.length })),
  );
}

export const zstd = (b: Buffer) => compress(b, { compressionLevel: 1 } as never);

export async function openSession(url: string, token: string, host: string, disk = 'sda'): Promise<string> {
  const r = await call(url, token, 'POST', '/v1/sessions', { json: { host, disk } });
  if (r.status !== 201) throw new Error(`open session: ${r.status} ${r.bytes.toString()}`);
  return r.json.id as string;
}

/** What the missing query of a fresh session of `host` answers for `ids`; the session is aborted after. */
export async function missingFor(url: string, token: string, host: string, ids: string[]): Promise<string[]> {
  const session = await openSession(url, token, host);
  const r = await call(url, token, 'POST', `/v1/sessions/${session}/missing`, { json: { ids } });
  await call(url, token, 'DELETE', `/v1/sessions/${session}`);
  return r.json.missing;
}

export async function putChunk(
  url: string,
  token: string,
  session: string,
  c: TestChunk,
  compressed = false,
): Promise<Answer> {
  return call(url, token, 'PUT', `/v1/chunks/${c.id}?session=${session}`, {
    body: compressed ? zstd(c.data) : c.data,
    headers: {
      'content-type': 'application/octet-stream',
      ...(compressed ? { 'content-encoding': 'zstd' } : {}),
    },
  });
}

export async function commit(url: string, token: string, session: string, manifest: Buffer): Promise<Answer> {
  return call(url, token, 'POST', `/v1/sessions/${session}/commit`, {
    body: manifest,
    headers: { 'content-type': MANIFEST_CONTENT_TYPE },
  });
}

/** The whole agent protocol: session, missing query, upload of what is missing, commit (`header`: time, tags…). */
export async function backup(
  url: string,
  token: string,
  host: string,
  disk: string,
  chunks: TestChunk[],
  header: Partial<ManifestHeader> = {},
) {
  const opened = await call(url, token, 'POST', '/v1/sessions', { json: { host, disk } });
  if (opened.status !== 201) throw new Error(`open session: ${opened.status} ${opened.bytes.toString()}`);
  const session: string = opened.json.id;
  const missing = await call(url, token, 'POST', `/v1/sessions/${session}/missing`, {
    json: { ids: chunks.map((c) => c.id) },
  });
  if (missing.status !== 200) throw new Error(`missing: ${missing.status} ${missing.bytes.toString()}`);
  const want = new Set<string>(missing.json.missing);
  for (const c of chunks) {
    if (!want.delete(c.id)) continue;
    const r = await putChunk(url, token, session, c, true);
    if (r.status !== 201 && r.status !== 200) throw new Error(`put: ${r.status} ${r.bytes.toString()}`);
  }
  const done = await commit(
    url,
    token,
    session,
    manifestFor(host, disk, chunks, { ...header, chunker: opened.json.chunker }),
  );
  if (done.status !== 201) throw new Error(`commit: ${done.status} ${done.bytes.toString()}`);
  return { session, uploaded: missing.json.missing.length as number, snapshot: done.json.snapshot };
}

/**
 * Starts a job route (gc, forget with prune, verify): expects 202 { job }, then polls GET /v1/jobs/:id to a
 * deadline and returns the finished job (`state` 'done' or 'failed').
 */
export async function runJob(
  url: string,
  token: string,
  path: string,
  json: unknown = {},
  timeoutMs = 60_000,
  // biome-ignore lint/suspicious/noExplicitAny: test answers are inspected field by field
): Promise<any> {
  const started = await call(url, token, 'POST', path, { json });
  if (started.status !== 202)
    throw new Error(`${path} answered ${started.status}, not 202: ${started.bytes.toString()}`);
  const deadline = Date.now() + timeoutMs;
  let job = started.json.job;
  while (job.state === 'running') {
    if (Date.now() > deadline) throw new Error(`job ${job.id} still running after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
    job = (await call(url, token, 'GET', `/v1/jobs/${job.id}`)).json.job;
  }
  return job;
}
