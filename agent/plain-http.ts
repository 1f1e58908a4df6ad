import { isLoopbackHost } from '../api/protocol.js';

let warned = false;

/**
 * Tokens are bearer credentials: one sent over plain http beyond this machine can be read, and used, by
 * anyone on the path. The agent still connects (a VPN or a trusted LAN may be the operator's choice) but
 * says so on stderr, once per run: a one-line warning, or a `{"type":"warning"}` JSON line with --json.
 */
export function warnIfPlainHttp(server: string, command: string, json: boolean): void {
  const url = new URL(server);
  if (warned || url.protocol !== 'http:' || isLoopbackHost(url.hostname)) return;
  warned = true;
  const message = `the token is sent over plain http to ${url.host}, which is not this machine: anyone on the network path can read and use it; use https (docs/security.md, "Transport")`;
  process.stderr.write(
    json
      ? `${JSON.stringify({ type: 'warning', code: 'PlainHttp', message })}\n`
      : `diskvault ${command}: warning: ${message}\n`,
  );
}
