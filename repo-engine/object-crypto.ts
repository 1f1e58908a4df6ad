import {
  createCipheriv,
  createDecipheriv,
  createHmac,
  hkdfSync,
  randomBytes,
  timingSafeEqual,
} from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { updateInto } from '../common/cipher-pieces.js';

/**
 * Authenticated encryption of stored objects: AES-256-GCM in the STREAM construction that age uses (a
 * fresh key per object derived with HKDF from a random salt, segments with a counter nonce and a flag on the
 * last one), so an object can be sealed and opened as a stream (manifests) or in one piece (chunks), and
 * any changed, dropped, reordered or appended byte fails authentication. docs/repository-format.md has the
 * byte layout; docs/security.md what it protects against.
 *
 *   magic        3 bytes  "DVE"
 *   version      1 byte   1
 *   salt         16 bytes random, per object
 *   segmentSize  u32 BE   plaintext bytes per segment (every segment but the last holds exactly this many)
 *   segments     ciphertext || 16-byte GCM tag, one per segment; at least one (an empty object has one
 *                empty final segment)
 *
 *   object key   HKDF-SHA256(ikm = the repository's object key, salt, info "diskvault object v1"), 32 bytes
 *   nonce        segment index as 11 bytes big-endian || 0x01 on the last segment, 0x00 otherwise
 *   AAD          the 24 header bytes || the object's storage key (UTF-8): an object moved to another name
 *                does not open
 */
export const SEALED_MAGIC = Buffer.from('DVE', 'ascii');
export const SEALED_VERSION = 1;
export const SEALED_HEADER_BYTES = 24;
export const TAG_BYTES = 16;
const SALT_BYTES = 16;
/**
 * Segments of streamed objects (manifests): a commit's manifest reaches storage a segment at a time as its
 * body arrives, so a segment is small (64 KiB: about 1,800 entries), and its 16-byte tag costs 0.02 %.
 */
export const STREAM_SEGMENT_BYTES = 64 * 1024;
const CIPHER = 'aes-256-gcm';

/** The keys one repository key yields, each for one purpose (HKDF, so none reveals another). */
export interface RepositorySubkeys {
  /** Ikm of every object's own key. */
  objects: Buffer;
  /** HMAC key of chunk storage names. */
  names: Buffer;
  /** HMAC key of the check value kept in the config, which tells a wrong key from corruption. */
  check: Buffer;
}

export const REPOSITORY_KEY_BYTES = 32;

/** HKDF-SHA256 of the repository key, salted with the repository id, one info label per purpose. */
export function deriveSubkeys(repositoryKey: Buffer, repositoryId: string): RepositorySubkeys {
  if (repositoryKey.length !== REPOSITORY_KEY_BYTES)
    throw new Error(`a repository key is ${REPOSITORY_KEY_BYTES} bytes, not ${repositoryKey.length}`);
  const salt = Buffer.from(repositoryId, 'hex');
  const derive = (info: string) => Buffer.from(hkdfSync('sha256', repositoryKey, salt, info, 32));
  return {
    objects: derive('diskvault repository objects v1'),
    names: derive('diskvault repository names v1'),
    check: derive('diskvault repository key check v1'),
  };
}

const KEY_CHECK_LABEL = 'diskvault repository key check';

/** The value the config keeps to recognise its key: HMAC-SHA256 of a fixed label under the check key, hex. */
export function keyCheckValue(keys: RepositorySubkeys): string {
  return createHmac('sha256', keys.check).update(KEY_CHECK_LABEL).digest('hex');
}

export function keyCheckMatches(keys: RepositorySubkeys, expected: string): boolean {
  const actual = Buffer.from(keyCheckValue(keys), 'hex');
  const wanted = Buffer.from(expected, 'hex');
  return actual.length === wanted.length && timingSafeEqual(actual, wanted);
}

/** Why an object did not open: the caller names the chunk or snapshot it belongs to. */
export class SealedObjectError extends Error {}

function header(salt: Buffer, segmentSize: number): Buffer {
  const h = Buffer.allocUnsafe(SEALED_HEADER_BYTES);
  SEALED_MAGIC.copy(h, 0);
  h[3] = SEALED_VERSION;
  salt.copy(h, 4);
  h.writeUInt32BE(segmentSize, 20);
  return h;
}

function nonce(index: number, last: boolean): Buffer {
  const n = Buffer.alloc(12);
  n.writeUIntBE(index, 5, 6);
  n[11] = last ? 1 : 0;
  return n;
}

/**
 * Seals and opens objects with one repository's object key. Stateless apart from the key: safe to share.
 */
export class ObjectSealer {
  constructor(private readonly objectsKey: Buffer) {}

  private objectKey(salt: Buffer): Buffer {
    return Buffer.from(hkdfSync('sha256', this.objectsKey, salt, 'diskvault object v1', 32));
  }

  /** `parts` concatenated, sealed as one segment (objects read whole: chunks). */
  /**
   * The sealed object is written into memory from `alloc` (a recycler's, so that sealing a chunk touches no
   * fresh pages), encrypting in pieces whose short-lived outputs malloc hands back each time.
   */
  seal(storageKey: string, parts: Buffer[], alloc: (length: number) => Buffer = Buffer.allocUnsafe): Buffer {
    const length = parts.reduce((n, p) => n + p.length, 0);
    const salt = randomBytes(SALT_BYTES);
    const head = header(salt, Math.max(1, length));
    const cipher = createCipheriv(CIPHER, this.objectKey(salt), nonce(0, true));
    cipher.setAAD(Buffer.concat([head, Buffer.from(storageKey, 'utf8')]));
    const total = SEALED_HEADER_BYTES + length + TAG_BYTES;
    const out = alloc(total).subarray(0, total);
    let at = head.copy(out, 0);
    for (const part of parts) at += updateInto(cipher, part, out, at);
    at += cipher.final().copy(out, at);
    cipher.getAuthTag().copy(out, at);
    return out;
  }

  /** The plaintext of a whole sealed object; SealedObjectError when it is not one or fails authentication. */
  open(storageKey: string, sealed: Buffer): Buffer {
    return this.openInPlace(storageKey, Buffer.from(sealed));
  }

  /**
   * open(), decrypting in place: the plaintext lies in `sealed`'s own memory (which the chunk read path
   * recycles), so opening an object allocates nothing as large as the object. For a caller that owns
   * `sealed` and no longer needs it sealed; after a SealedObjectError it holds unauthenticated bytes.
   */
  openInPlace(storageKey: string, sealed: Buffer): Buffer {
    const opener = new SegmentOpener(this, storageKey, sealed.subarray(0, SEALED_HEADER_BYTES));
    const body = sealed.subarray(SEALED_HEADER_BYTES);
    const step = opener.segmentSize + TAG_BYTES;
    const count = Math.max(1, Math.ceil(body.length / step));
    let plainLength = 0;
    for (let i = 0; i < count; i++) {
      const segment = body.subarray(i * step, Math.min(body.length, (i + 1) * step));
      // Each segment's plaintext moves down over the tags before it: never over bytes not yet read.
      plainLength += opener.openInto(segment, i === count - 1, body, plainLength);
    }
    return body.subarray(0, plainLength);
  }

  /** A Transform sealing what is written through it, in segments of STREAM_SEGMENT_BYTES. */
  sealStream(storageKey: string, segmentSize = STREAM_SEGMENT_BYTES): Transform {
    const salt = randomBytes(SALT_BYTES);
    const head = header(salt, segmentSize);
    const key = this.objectKey(salt);
    const aad = Buffer.concat([head, Buffer.from(storageKey, 'utf8')]);
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    let index = 0;
    let started = false;
    const start = (stream: Transform) => {
      if (!started) stream.push(head);
      started = true;
    };
    const segment = (plain: Buffer, last: boolean): Buffer => {
      const cipher = createCipheriv(CIPHER, key, nonce(index++, last));
      cipher.setAAD(aad);
      return Buffer.concat([cipher.update(plain), cipher.final(), cipher.getAuthTag()]);
    };
    return new Transform({
      transform(piece: Buffer, _enc, done: TransformCallback) {
        start(this);
        pending.push(piece);
        pendingBytes += piece.length;
        // A full segment is sealed only once more follows: the last segment must carry the last flag.
        while (pendingBytes > segmentSize) {
          const all = Buffer.concat(pending);
          this.push(segment(all.subarray(0, segmentSize), false));
          pending = [all.subarray(segmentSize)];
          pendingBytes -= segmentSize;
        }
        done();
      },
      flush(done: TransformCallback) {
        start(this);
        this.push(segment(Buffer.concat(pending), true));
        done();
      },
    });
  }

  /**
   * A Transform opening a sealed object as it streams through; a damaged object fails it with the error
   * `name` makes of the SealedObjectError (so readers see which object it was).
   */
  openStream(storageKey: string, name: (err: SealedObjectError) => Error = (e) => e): Transform {
    let opener: SegmentOpener | undefined;
    // Pieces wait in a list and are joined once a whole segment is there: joining on every piece would
    // copy a large single-segment object over and over.
    let pieces: Buffer[] = [];
    let length = 0;
    let buffered: Buffer = Buffer.alloc(0);
    const take = (n: number): boolean => {
      if (buffered.length >= n) return true;
      if (buffered.length + length < n) return false;
      buffered = Buffer.concat([buffered, ...pieces]);
      pieces = [];
      length = 0;
      return true;
    };
    return new Transform({
      transform: (piece: Buffer, _enc, done: TransformCallback) => {
        pieces.push(piece);
        length += piece.length;
        try {
          if (!opener) {
            if (!take(SEALED_HEADER_BYTES)) return done();
            opener = new SegmentOpener(this, storageKey, buffered.subarray(0, SEALED_HEADER_BYTES));
            buffered = buffered.subarray(SEALED_HEADER_BYTES);
          }
          const step = opener.segmentSize + TAG_BYTES;
          const out: Buffer[] = [];
          while (take(step + 1)) {
            out.push(opener.open(buffered.subarray(0, step), false));
            buffered = buffered.subarray(step);
          }
          done(null, out.length === 0 ? undefined : Buffer.concat(out));
        } catch (err) {
          done(err instanceof SealedObjectError ? name(err) : (err as Error));
        }
      },
      flush: (done: TransformCallback) => {
        try {
          take(buffered.length + length);
          if (!opener) throw new SealedObjectError('truncated before its encryption header');
          done(null, opener.open(buffered, true));
        } catch (err) {
          done(err instanceof SealedObjectError ? name(err) : (err as Error));
        }
      },
    });
  }

  /** @internal for SegmentOpener */
  keyFor(salt: Buffer): Buffer {
    return this.objectKey(salt);
  }
}

/** Opens the segments of one object in order, checking each one's index and last flag. */
class SegmentOpener {
  readonly segmentSize: number;
  private readonly key: Buffer;
  private readonly aad: Buffer;
  private index = 0;

  constructor(sealer: ObjectSealer, storageKey: string, head: Buffer) {
    if (head.length < SEALED_HEADER_BYTES || !head.subarray(0, 3).equals(SEALED_MAGIC))
      throw new SealedObjectError('not an encrypted object (no encryption header)');
    if (head[3] !== SEALED_VERSION)
      throw new SealedObjectError(`unknown encryption format version ${head[3]}`);
    this.segmentSize = head.readUInt32BE(20);
    if (this.segmentSize === 0) throw new SealedObjectError('segment size 0 in its encryption header');
    this.key = sealer.keyFor(head.subarray(4, 20));
    this.aad = Buffer.concat([head, Buffer.from(storageKey, 'utf8')]);
  }

  /** The plaintext of the next segment, in a buffer of its own. */
  open(segment: Buffer, last: boolean): Buffer {
    const plain = Buffer.allocUnsafe(Math.max(0, segment.length - TAG_BYTES));
    return plain.subarray(0, this.openInto(segment, last, plain, 0));
  }

  /**
   * open(), writing the plaintext to `into` at `at` (which may be the segment's own memory or lie before
   * it: bytes are written only after they were read). Decrypts in pieces whose outputs are small and
   * short-lived, so their memory is reused instead of fresh pages being touched for a whole object.
   * Returns the plaintext's length.
   */
  openInto(segment: Buffer, last: boolean, into: Buffer, at: number): number {
    if (segment.length < TAG_BYTES || segment.length > this.segmentSize + TAG_BYTES)
      throw new SealedObjectError(`segment ${this.index} is truncated`);
    if (!last && segment.length !== this.segmentSize + TAG_BYTES)
      throw new SealedObjectError(`segment ${this.index} is truncated`);
    const decipher = createDecipheriv(CIPHER, this.key, nonce(this.index, last));
    decipher.setAAD(this.aad);
    const cipherLength = segment.length - TAG_BYTES;
    decipher.setAuthTag(Buffer.from(segment.subarray(cipherLength)));
    let written = updateInto(decipher, segment.subarray(0, cipherLength), into, at);
    try {
      written += decipher.final().copy(into, at + written);
    } catch {
      throw new SealedObjectError(
        `segment ${this.index} fails authentication (changed bytes, or an object from another name or repository)`,
      );
    }
    this.index++;
    return written;
  }
}

/** HMAC-SHA256 of a 32-byte id under the names key, hex: a storage name that says nothing of the id. */
export function keyedName(namesKey: Buffer, id: string): string {
  return createHmac('sha256', namesKey).update(Buffer.from(id, 'hex')).digest('hex');
}
