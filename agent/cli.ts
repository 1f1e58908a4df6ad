#!/usr/bin/env node
import { DISKVAULT_VERSION } from '../api/version.js';
import { EXIT_USAGE, reportError } from '../common/cli.js';

/**
 * The `diskvault` command: a thin dispatcher. Each command lives in its own module exporting
 * `run(argv): Promise<number>` (the exit code) and is loaded only when used, so `diskvault backup` never
 * loads the server and the server never loads the agent.
 */
const COMMANDS: Record<string, { module: string; summary: string }> = {
  server: { module: '../api/commands/server.js', summary: 'run the repository server' },
  token: {
    module: '../api/commands/token.js',
    summary: 'create, list or revoke API tokens (on the server machine)',
  },
  backup: { module: './commands/backup.js', summary: 'back up a disk image, block device or stdin' },
  restore: { module: './commands/restore.js', summary: 'restore a snapshot to a file, device or stdout' },
  snapshots: { module: './commands/snapshots.js', summary: 'list snapshots' },
  nbd: {
    module: './commands/nbd.js',
    summary: 'serve a snapshot read-only over NBD, to mount it without restoring',
  },
  share: { module: './commands/share.js', summary: "print a URL serving a snapshot's image without a token" },
  forget: { module: './commands/admin.js', summary: 'remove snapshots by retention policy or by id (admin)' },
  gc: { module: './commands/admin.js', summary: 'delete chunks no snapshot uses (admin)' },
  sync: { module: './commands/sync.js', summary: 'pull snapshots from another server (an offsite copy)' },
  protect: { module: './commands/protect.js', summary: 'keep snapshots from forget, delete and gc (admin)' },
  unprotect: { module: './commands/protect.js', summary: 'lift the protection of snapshots (admin)' },
  verify: { module: './commands/admin.js', summary: 'check the repository (admin)' },
  stats: { module: './commands/admin.js', summary: 'repository statistics, newest snapshot of each disk' },
  key: {
    module: './commands/key.js',
    summary: 'create and manage end-to-end key files (create, add, list, remove, passwd)',
  },
};

function usage(): string {
  const lines = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(10)} ${c.summary}`);
  return `usage: diskvault COMMAND [options]\n       diskvault --version\n\ncommands:\n${lines.join('\n')}\n\nRun 'diskvault COMMAND --help' for a command's options.\n`;
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === 'help' || name === '--help' || name === '-h') {
    process.stdout.write(usage());
    return name ? 0 : EXIT_USAGE;
  }
  if (name === '--version' || name === '-V' || name === 'version') {
    process.stdout.write(`diskvault ${DISKVAULT_VERSION}\n`);
    return 0;
  }
  const command = COMMANDS[name];
  if (!command) {
    process.stderr.write(`diskvault: unknown command '${name}'\n\n${usage()}`);
    return EXIT_USAGE;
  }
  try {
    const mod = (await import(command.module)) as { run(argv: string[], command: string): Promise<number> };
    return await mod.run(rest, name);
  } catch (err) {
    return reportError(err, name);
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    process.exitCode = reportError(err, 'diskvault');
  },
);
