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

/** What the server now does about a reported chunk, as a clause for a person. */
export function verdictClause(status: DamageVerdict['status']): string {
  if (status === 'damaged')
    return 'the server has marked its copy damaged, so the next backup of a machine that has it uploads it again';
  if (status === 'good') return "the server's copy checks out, so it was damaged on its way here: try again";
  return 'the server no longer holds it';
}

/** One line per verdict: the chunk and what the server now does about it. */
export function describeVerdict(v: DamageVerdict): string {
  return `chunk ${v.id}: ${verdictClause(v.status)}`;
}
