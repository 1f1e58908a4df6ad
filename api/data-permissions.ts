import { chmod, stat } from 'node:fs/promises';

/**
 * The data folder holds the tokens file, the index (every snapshot's name, every chunk's hash) and, with
 * local storage, the backups themselves. Files are written 0600 and folders 0700 whatever the umask, but a
 * folder made by someone else keeps its mode: systemd's StateDirectory= makes 0755 unless the unit says
 * StateDirectoryMode=0700. At start each such folder is checked; one that other users may read or enter is
 * set to 0700 when the server's user owns it (it is the server's own folder, and nothing else belongs in
 * it), and named in a warning either way.
 */
export async function restrictFolder(path: string, what: string, warn: (msg: string) => void): Promise<void> {
  const st = await stat(path);
  const mode = st.mode & 0o777;
  if ((mode & 0o077) === 0) return;
  const shown = mode.toString(8).padStart(4, '0');
  const ours = typeof process.getuid === 'function' && st.uid === process.getuid();
  if (ours) {
    try {
      await chmod(path, 0o700);
      warn(
        `${what} ${path} was open to other users (mode ${shown}); set it to 0700 (in a systemd unit, StateDirectoryMode=0700 keeps it so)`,
      );
      return;
    } catch (err) {
      warn(
        `${what} ${path} is open to other users (mode ${shown}) and could not be changed (${(err as Error).message}): chmod 700 it`,
      );
      return;
    }
  }
  warn(
    `${what} ${path} is open to other users (mode ${shown}) and belongs to another user, so it was left as is: chmod 700 it`,
  );
}
