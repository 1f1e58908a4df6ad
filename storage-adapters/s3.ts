import http from 'node:http';
import https from 'node:https';
import { PassThrough, Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  DeleteObjectCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  type ListObjectsV2CommandOutput,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import {
  DiskvaultError,
  InvalidInputError,
  isDiskvaultError,
  NotFoundError,
  StorageFullError,
} from '../common/errors.js';
import type { BufferAllocator, ByteRange, ListEntry, StorageAdapter } from './adapter.js';
import { validateKey } from './adapter.js';
import { checkRange, readAll, readInto, validateListPrefix } from './adapter-support.js';

/**
 * Blobs as objects in one S3 bucket (AWS or any S3-compatible server), optionally under a key prefix.
 * PutObject and CompleteMultipartUpload are atomic on S3, so a reader sees the old object or the whole new
 * one; a failed multipart upload is aborted so no parts linger.
 */
export interface S3StorageOptions {
  /** For S3-compatible servers (MinIO, Ceph, a test server). Omitted: AWS for `region`. */
  endpoint?: string;
  region: string;
  bucket: string;
  /** Prepended to every key, e.g. 'diskvault/'; a missing trailing '/' is added. */
  prefix?: string;
  /** Path-style URLs (http://host/bucket/key); most non-AWS servers need it. */
  forcePathStyle?: boolean;
  /** Omitted: the SDK's default chain (environment, shared config, instance role). */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  /** Tries per request, including the first, with exponential backoff on throttling, 5xx and network errors. */
  maxAttempts?: number;
  /** Keys per ListObjectsV2 page (S3 caps it at 1000); tests lower it to cross pages. */
  pageSize?: number;
  /** Part size for multipart uploads; streams and byte arrays above it are uploaded in parts. */
  partSize?: number;
  /** Parts of one upload in flight at once. */
  uploadConcurrency?: number;
  /**
   * A request whose socket sees no traffic for this long fails (and is retried): a stalled S3 must not hold
   * the server's request, and the agent behind it, forever. Default 2 minutes.
   */
  requestTimeoutMs?: number;
}

const DEFAULT_MAX_ATTEMPTS = 5;
const DEFAULT_PAGE_SIZE = 1000;
const DEFAULT_PART_SIZE = 8 * 1024 * 1024;
const DEFAULT_UPLOAD_CONCURRENCY = 4;
/** DeleteObjects accepts at most this many keys per request. */
const DELETE_BATCH = 1000;
const MAX_SOCKETS = 64;
const DEFAULT_REQUEST_TIMEOUT_MS = 120_000;
const CONNECTION_TIMEOUT_MS = 10_000;

/**
 * diskvault targets Node 20 on purpose (Debian's LTS here); the SDK's notice that its 2027 releases will need
 * Node 22 is for whoever upgrades the lock file, not for an operator reading the server's log at every start.
 */
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

export async function openS3Storage(options: S3StorageOptions): Promise<StorageAdapter> {
  if (!options.bucket) throw new InvalidInputError('S3 storage needs a bucket');
  if (!options.region) throw new InvalidInputError('S3 storage needs a region');
  const prefix = normalisePrefix(options.prefix);
  const agentOptions = { keepAlive: true, maxSockets: MAX_SOCKETS };
  const client = new S3Client({
    endpoint: options.endpoint,
    region: options.region,
    forcePathStyle: options.forcePathStyle,
    credentials: options.credentials,
    maxAttempts: options.maxAttempts ?? DEFAULT_MAX_ATTEMPTS,
    retryMode: 'standard',
    // Checksums only where S3 demands them: the streaming-checksum (aws-chunked) encoding the SDK now uses
    // by default is not understood by every S3-compatible server.
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    requestHandler: {
      httpAgent: new http.Agent(agentOptions),
      httpsAgent: new https.Agent(agentOptions),
      requestTimeout: options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS,
      connectionTimeout: CONNECTION_TIMEOUT_MS,
      // Without it the SDK only logs a warning on timeout and keeps waiting.
      throwOnRequestTimeout: true,
    },
  });
  const storage = new S3Storage(client, options, prefix);
  await storage.checkBucket();
  return storage;
}

class S3Storage implements StorageAdapter {
  readonly description: string;
  private readonly bucket: string;
  private readonly endpointNote: string;
  private readonly pageSize: number;
  private readonly partSize: number;
  private readonly uploadConcurrency: number;
  /**
   * Whether HeadBucket found the bucket. A 404 to HEAD has no body, so it cannot tell a missing key from a
   * missing bucket: stat trusts it as "absent" only once the bucket is known to exist.
   */
  private bucketFound = false;

  constructor(
    private readonly client: S3Client,
    options: S3StorageOptions,
    private readonly prefix: string,
  ) {
    this.bucket = options.bucket;
    this.endpointNote = options.endpoint ? ` at ${options.endpoint}` : '';
    this.description = `s3://${options.bucket}/${prefix}`;
    this.pageSize = Math.max(1, Math.min(1000, options.pageSize ?? DEFAULT_PAGE_SIZE));
    this.partSize = Math.max(5 * 1024 * 1024, options.partSize ?? DEFAULT_PART_SIZE);
    this.uploadConcurrency = Math.max(1, options.uploadConcurrency ?? DEFAULT_UPLOAD_CONCURRENCY);
  }

  /**
   * Fails the open of a bucket that does not exist (a typo in its name), instead of every key in it
   * reading as absent. Any other answer (a policy that refuses HeadBucket, a network error) leaves the
   * question open for stat to settle: the operations that need the bucket report their own errors.
   */
  async checkBucket(): Promise<void> {
    try {
      await this.client.send(new HeadBucketCommand({ Bucket: this.bucket }));
      this.bucketFound = true;
    } catch (err) {
      if (isNoSuchBucket(err) || statusOf(err) === 404) {
        this.client.destroy();
        throw new InvalidInputError(`S3 bucket ${this.bucket} does not exist${this.endpointNote}`, {
          bucket: this.bucket,
        });
      }
    }
  }

  private objectKey(key: string): string {
    validateKey(key);
    return this.prefix + key;
  }

  async put(key: string, data: Uint8Array | Readable): Promise<void> {
    const Key = this.objectKey(key);
    if (data instanceof Uint8Array && data.length <= this.partSize) {
      try {
        await this.client.send(
          new PutObjectCommand({ Bucket: this.bucket, Key, Body: data, ContentLength: data.length }),
        );
      } catch (err) {
        throw this.mapError(err, `put ${key}`);
      }
      return;
    }
    await this.uploadInParts(key, Key, data);
  }

  private async uploadInParts(key: string, Key: string, data: Uint8Array | Readable): Promise<void> {
    const body: Uint8Array | Readable = data;
    let pass: PassThrough | undefined;
    let sourceError: unknown;
    let feeding: Promise<void> = Promise.resolve();
    if (!(data instanceof Uint8Array)) {
      // Through pipeline() so that a source destroyed without an error still fails the upload (as a
      // premature close) instead of looking like a short, complete object.
      pass = new PassThrough();
      feeding = pipeline(data, pass).catch((err) => {
        sourceError = err;
        throw err;
      });
    }
    const upload = new Upload({
      client: this.client,
      params: { Bucket: this.bucket, Key, Body: pass ?? body },
      partSize: this.partSize,
      queueSize: this.uploadConcurrency,
      leavePartsOnError: false,
    });
    try {
      await Promise.all([upload.done(), feeding]);
    } catch (err) {
      // Stop the caller's source too, and report its own failure rather than a storage failure.
      pass?.destroy();
      feeding.catch(() => {});
      await upload.abort().catch(() => {});
      if (sourceError !== undefined) throw sourceError;
      throw this.mapError(err, `put ${key}`);
    }
  }

  async get(key: string, range?: ByteRange): Promise<Readable> {
    return (await this.getObject(key, range)).body;
  }

  /** The object's body, and its length when S3 says it. */
  private async getObject(key: string, range?: ByteRange): Promise<{ body: Readable; length?: number }> {
    const Key = this.objectKey(key);
    if (range) checkRange(range);
    try {
      const result = await this.client.send(
        new GetObjectCommand({
          Bucket: this.bucket,
          Key,
          Range: range ? `bytes=${range.start}-${range.end ?? ''}` : undefined,
        }),
      );
      const body = result.Body;
      if (body instanceof Readable) return { body, length: result.ContentLength };
      if (body === undefined) return { body: Readable.from([]), length: 0 };
      throw new DiskvaultError('Unavailable', `S3 returned an unexpected body type for ${key}`);
    } catch (err) {
      throw this.mapError(err, `get ${key}`, key);
    }
  }

  async getBytes(key: string, range?: ByteRange, alloc?: BufferAllocator): Promise<Buffer> {
    const { body, length } = await this.getObject(key, range);
    try {
      return alloc && length !== undefined ? await readInto(body, alloc(length), key) : await readAll(body);
    } catch (err) {
      throw this.mapError(err, `get ${key}`, key);
    }
  }

  async stat(key: string): Promise<{ size: number; mtimeMs: number } | undefined> {
    const Key = this.objectKey(key);
    try {
      const head = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key }));
      return { size: head.ContentLength ?? 0, mtimeMs: head.LastModified?.getTime() ?? 0 };
    } catch (err) {
      if (!isS3NotFound(err)) throw this.mapError(err, `stat ${key}`, key);
    }
    if (this.bucketFound) return undefined;
    // The bucket was never seen: a GET's error body says which of the two is missing.
    try {
      const got = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key }));
      (got.Body as Readable | undefined)?.destroy?.();
      return { size: got.ContentLength ?? 0, mtimeMs: got.LastModified?.getTime() ?? 0 };
    } catch (err) {
      if (!isS3NotFound(err)) throw this.mapError(err, `stat ${key}`, key);
    }
    this.bucketFound = true;
    return undefined;
  }

  async delete(key: string): Promise<void> {
    const Key = this.objectKey(key);
    try {
      // S3 answers 204 for an absent key too: delete is idempotent by nature.
      await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key }));
    } catch (err) {
      if (isS3NotFound(err)) return;
      throw this.mapError(err, `delete ${key}`, key);
    }
  }

  async deleteMany(keys: string[]): Promise<void> {
    const objectKeys = keys.map((key) => this.objectKey(key));
    for (let i = 0; i < objectKeys.length; i += DELETE_BATCH) {
      const batch = objectKeys.slice(i, i + DELETE_BATCH);
      let errors: { Key?: string; Code?: string; Message?: string }[] | undefined;
      try {
        const result = await this.client.send(
          new DeleteObjectsCommand({
            Bucket: this.bucket,
            Delete: { Objects: batch.map((Key) => ({ Key })), Quiet: true },
          }),
        );
        errors = result.Errors?.filter((e) => e.Code !== 'NoSuchKey');
      } catch (err) {
        throw this.mapError(err, `delete ${batch.length} keys`);
      }
      if (errors && errors.length > 0) {
        const first = errors[0];
        throw new DiskvaultError(
          'Unavailable',
          `S3 refused to delete ${errors.length} of ${batch.length} keys (first: ${first.Key}: ${first.Code} ${first.Message ?? ''})`.trim(),
          { failed: errors.map((e) => ({ key: this.stripPrefix(e.Key ?? ''), code: e.Code })) },
        );
      }
    }
  }

  async *list(prefix: string): AsyncIterable<ListEntry> {
    validateListPrefix(prefix);
    let ContinuationToken: string | undefined;
    do {
      let page: ListObjectsV2CommandOutput;
      try {
        page = await this.client.send(
          new ListObjectsV2Command({
            Bucket: this.bucket,
            Prefix: this.prefix + prefix,
            MaxKeys: this.pageSize,
            ContinuationToken,
          }),
        );
      } catch (err) {
        // Never end quietly: a caller such as gc must not mistake a partial listing for the whole.
        throw this.mapError(err, `list ${prefix}`);
      }
      for (const object of page.Contents ?? []) {
        if (object.Key === undefined) continue;
        yield {
          key: this.stripPrefix(object.Key),
          size: object.Size ?? 0,
          mtimeMs: object.LastModified?.getTime() ?? 0,
        };
      }
      if (page.IsTruncated && !page.NextContinuationToken) {
        throw new DiskvaultError(
          'Unavailable',
          `S3 listing of ${prefix} was truncated without a continuation token`,
        );
      }
      ContinuationToken = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (ContinuationToken);
  }

  private stripPrefix(objectKey: string): string {
    return objectKey.startsWith(this.prefix) ? objectKey.slice(this.prefix.length) : objectKey;
  }

  private mapError(err: unknown, operation: string, key?: string): Error {
    return mapS3Error(err, operation, this.bucket, key);
  }

  async close(): Promise<void> {
    this.client.destroy();
  }
}

function normalisePrefix(prefix: string | undefined): string {
  if (!prefix) return '';
  const withSlash = prefix.endsWith('/') ? prefix : `${prefix}/`;
  validateKey(withSlash.slice(0, -1));
  return withSlash;
}

interface S3ErrorShape {
  name?: string;
  Code?: string;
  code?: string;
  $metadata?: { httpStatusCode?: number };
  $retryable?: unknown;
}

/**
 * The key itself is absent: NoSuchKey (a GET's body), or NotFound (the SDK's name for a 404 without a body,
 * as HEAD answers). Never NoSuchBucket, nor any other 404: a missing bucket is a configuration error.
 */
function isS3NotFound(err: unknown): boolean {
  const e = err as S3ErrorShape | undefined;
  return e?.name === 'NoSuchKey' || e?.name === 'NotFound';
}

function isNoSuchBucket(err: unknown): boolean {
  const e = err as S3ErrorShape | undefined;
  return e?.name === 'NoSuchBucket' || e?.Code === 'NoSuchBucket';
}

function statusOf(err: unknown): number | undefined {
  return (err as S3ErrorShape | undefined)?.$metadata?.httpStatusCode;
}

/** One place that turns SDK and network errors into the typed family, keeping the original as cause. */
function mapS3Error(err: unknown, operation: string, bucket: string, key?: string): Error {
  if (isDiskvaultError(err)) return err;
  const e = err as S3ErrorShape & Error;
  const status = e?.$metadata?.httpStatusCode;
  const name = e?.name ?? 'Error';
  const reason = `${name}${status ? ` (HTTP ${status})` : ''}: ${e?.message ?? String(err)}`;
  // Before NotFound: every key of a missing bucket is "not found" too, and must not read as absent.
  if (isNoSuchBucket(err)) {
    return new DiskvaultError(
      'Unavailable',
      `S3 ${operation}: the bucket ${bucket} does not exist`,
      undefined,
      {
        cause: err,
      },
    );
  }
  if (key !== undefined && isS3NotFound(err)) {
    return new NotFoundError(`storage key ${key} not found`, { key });
  }
  if (name === 'InvalidRange' || status === 416) {
    return new InvalidInputError(`S3 ${operation}: byte range not satisfiable`, { key });
  }
  if (name === 'QuotaExceeded' || name === 'XMinioStorageFull' || status === 507) {
    return new StorageFullError(`S3 ${operation}: storage full: ${reason}`, { cause: err });
  }
  if (
    name === 'AccessDenied' ||
    name === 'InvalidAccessKeyId' ||
    name === 'SignatureDoesNotMatch' ||
    status === 403
  ) {
    return new DiskvaultError('Forbidden', `S3 ${operation} refused: ${reason}`, undefined, { cause: err });
  }
  return new DiskvaultError('Unavailable', `S3 ${operation} failed: ${reason}`, key ? { key } : undefined, {
    cause: err,
  });
}
