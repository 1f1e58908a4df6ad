import { readFileSync } from 'node:fs';

/**
 * The release this build belongs to, read from package.json at run time rather than copied into the code,
 * so `diskvault --version`, the server's start line, /metrics and the agent's User-Agent can never disagree
 * with the package that was installed. Compiled, this file sits at dist/api/, two folders under the root.
 */
function readVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
      version?: unknown;
    };
    return typeof pkg.version === 'string' ? pkg.version : 'unknown';
  } catch {
    // A dist/ copied without its package.json still runs; it just cannot say which release it is.
    return 'unknown';
  }
}

export const DISKVAULT_VERSION = readVersion();

/** What the agent sends as User-Agent, so the server's request log shows which agents run which release. */
export const AGENT_USER_AGENT = `diskvault/${DISKVAULT_VERSION} node/${process.versions.node}`;
