import { pollUntil } from './poll.js';

/**
 * How chunks went to an agent, read from the server's log: each fetch stream logs one line when it closes
 * (`"msg":"chunk fetch stream"`, with `outcome`, `chunks`, `errors`, `bytesOut`, `ms`), and each chunk read as
 * its own request logs its GET.
 */
export interface FetchStreamLine {
  outcome: string;
  chunks: number;
  errors: number;
  bytesOut: number;
  ms: number;
}

const GET_CHUNK = /"method":"GET","route":"\/v1\/chunks\/:id"/;

export function fetchStreamLines(logs: string[]): FetchStreamLine[] {
  return logs.filter((l) => l.includes('"msg":"chunk fetch stream"')).map((l) => JSON.parse(l));
}

export function chunkGetLines(logs: string[]): string[] {
  return logs.filter((l) => GET_CHUNK.test(l));
}

/**
 * The fetch streams and per-chunk GETs logged since line `from`, once at least one stream has been logged as
 * closed (the line comes as the server sees the agent's side end, a moment after the agent exits).
 */
export async function downloadsLoggedSince(
  server: { logs: string[] },
  from: number,
): Promise<{ streams: FetchStreamLine[]; gets: string[] }> {
  const streams = await pollUntil(
    () => fetchStreamLines(server.logs.slice(from)),
    (lines) => lines.length > 0,
    'a fetch stream to be logged as closed',
  );
  return { streams, gets: chunkGetLines(server.logs.slice(from)) };
}
