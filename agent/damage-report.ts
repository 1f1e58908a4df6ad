import { type DamageReportResponse, MAX_DAMAGE_REPORTS } from '../api/protocol.js';
import type { DiskvaultClient } from './client.js';

/** A chunk a read here found wrong, and what was wrong with it. */
export interface FoundDamage {
  chunk: string;
  detail: string;
}

export type DamageVerdict = DamageReportResponse['chunks'][number];

/**
 * Tells the server of chunks a restore or `verify --key` found wrong, so that it stops counting a damaged
 * copy as stored and the next backup that has the chunk uploads it again (a sealed chunk's damage only a
 * holder of its key can see). Each chunk once, in batches the server takes. Returns the server's verdicts;
 * a report that fails is left out and `warn` told, since the reader's own answer stands either way.
 */
export async function reportDamage(
  client: DiskvaultClient,
  found: FoundDamage[],
  warn: (line: string) => void,
): Promise<DamageVerdict[]> {
  const byChunk = new Map(found.map((f) => [f.chunk, f.detail.slice(0, 500)]));
  const chunks = [...byChunk].map(([id, detail]) => ({ id, detail }));
  const verdicts: DamageVerdict[] = [];
  for (let at = 0; at < chunks.length; at += MAX_DAMAGE_REPORTS) {
    const batch = chunks.slice(at, at + MAX_DAMAGE_REPORTS);
    try {
      verdicts.push(...(await client.reportDamage(batch)));
    } catch (err) {
      warn(`could not report ${batch.length} damaged chunk(s) to the server: ${(err as Error).message}`);
    }
  }
  return verdicts;
}

/** One line per verdict, for a person: what the server now does about each chunk. */
export function describeVerdict(v: DamageVerdict): string {
  if (v.status === 'damaged')
    return `chunk ${v.id} is marked damaged on the server: the next backup of a machine that has it uploads it again`;
  if (v.status === 'good')
    return `chunk ${v.id}: the server's stored copy checks out, so it was damaged on its way here; try again`;
  return `chunk ${v.id}: the server no longer holds it`;
}
