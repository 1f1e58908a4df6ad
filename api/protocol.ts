/**
 * The agent protocol as both sides see it: paths, headers and bodies. The server (api/) and the agent
 * (agent/) import these so the two cannot drift apart. Every route lives under /v1; errors are always
 * `{ code, message, details? }` JSON with the status from api/errors.ts.
 */
import type { ChunkerParams } from '../repo-engine/manifest-codec.js';
import type { SnapshotInfo } from '../repo-engine/types.js';

export type { SnapshotInfo, ChunkerParams };

export const DEFAULT_PORT = 8420;
/** Content type of a commit body and of a manifest download: the binary manifest (repo-engine/manifest-codec.ts). */
export const MANIFEST_CONTENT_TYPE = 'application/x-diskvault-manifest';
/** PUT /v1/chunks/:id?session=SID with `Content-Encoding: zstd` when the body is compressed. */
export const CHUNK_CONTENT_TYPE = 'application/octet-stream';
/** Sent with every chunk download: the raw length, so the client can bound its decompression. */
export const RAW_LENGTH_HEADER = 'x-diskvault-raw-length';
/** Most ids one missing query may carry. */
export const MAX_MISSING_IDS = 50_000;

/** POST /v1/sessions */
export interface CreateSessionRequest {
  host: string;
  disk: string;
}
export interface CreateSessionResponse {
  id: string;
  chunker: ChunkerParams;
  expiresAt: string;
  previous: SnapshotInfo | null;
}

/** POST /v1/sessions/:id/missing */
export interface MissingRequest {
  ids: string[];
}
export interface MissingResponse {
  missing: string[];
}

/** PUT /v1/chunks/:id?session=SID -> 201 when stored, 200 when already present. */
export interface PutChunkResponse {
  id: string;
  stored: boolean;
}

/**
 * POST /v1/sessions/:id/commit, body: binary manifest without `id` -> 201 { snapshot }.
 * 409 Conflict with details.missing = ids (at most 1,000) the repository does not hold: upload them, commit again.
 */
export interface CommitResponse {
  snapshot: SnapshotInfo;
}

export interface ErrorBody {
  code: string;
  message: string;
  details?: Record<string, unknown>;
}
