import { X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createSecureContext } from 'node:tls';

/** A certificate chain and its key, read from the operator's files and checked to belong together. */
export interface TlsCredentials {
  cert: Buffer;
  key: Buffer;
  /** Who the certificate names and until when, for the log: 'CN=vault.example.net, valid until …'. */
  description: string;
  /** The certificate's end of validity. */
  validTo: Date;
}

export class TlsCredentialsError extends Error {}

/**
 * Reads --tls-cert and --tls-key. Both at start and on SIGHUP, so a renewed certificate (certbot, an
 * internal CA) is picked up by `systemctl reload` without dropping a backup in flight; a pair that does not
 * go together is refused here, and on a reload the previous pair stays in use.
 */
export async function loadTlsCredentials(files: {
  certFile: string;
  keyFile: string;
}): Promise<TlsCredentials> {
  const read = async (file: string, what: string) => {
    try {
      return await readFile(file);
    } catch (err) {
      throw new TlsCredentialsError(`cannot read the TLS ${what} ${file}: ${(err as Error).message}`);
    }
  };
  const cert = await read(files.certFile, 'certificate');
  const key = await read(files.keyFile, 'key');
  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(cert);
  } catch {
    throw new TlsCredentialsError(`${files.certFile} holds no PEM certificate`);
  }
  try {
    createSecureContext({ cert, key });
  } catch (err) {
    throw new TlsCredentialsError(
      `the TLS key ${files.keyFile} does not fit the certificate ${files.certFile}: ${(err as Error).message}`,
    );
  }
  const validTo = new Date(leaf.validTo);
  const names = leaf.subjectAltName ?? leaf.subject.replace(/\n/g, ', ');
  return { cert, key, validTo, description: `${names}, valid until ${validTo.toISOString()}` };
}
