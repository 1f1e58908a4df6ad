import { fileURLToPath } from 'node:url';

/**
 * The `diskvault` command as users run it: agent/diskvault, the launcher that starts node on
 * dist/agent/cli.js with the malloc settings it ships with. Tests that run the CLI or the server as a child
 * process go through it, so the launcher is exercised by every end-to-end test.
 */
export const DISKVAULT = fileURLToPath(new URL('../../../agent/diskvault', import.meta.url));
