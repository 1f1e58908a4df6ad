import { randomBytes } from 'node:crypto';
import type { VerifyProgress } from '../repo-engine/types.js';
import { errorResponse } from './errors.js';

/**
 * Long operations (verify, gc, forget with prune) run as jobs: the request returns a job id at once and the
 * client polls GET /v1/jobs/:id. Jobs live in memory; the newest `keep` finished ones are remembered.
 */
export type JobState = 'running' | 'done' | 'failed';

export interface JobStatus {
  id: string;
  kind: string;
  state: JobState;
  startedAt: string;
  finishedAt?: string;
  progress?: VerifyProgress;
  result?: unknown;
  error?: { code: string; message: string };
  /** The token that started it, so a tenant admin only sees its own jobs. */
  tokenId: string;
}

export class JobRegistry {
  private readonly jobs = new Map<string, JobStatus>();
  /** What each running job does, in full (its kind and parameters): a request joins only the same work. */
  private readonly work = new Map<string, string>();

  constructor(
    private readonly log: (line: string) => void,
    private readonly keep = 100,
  ) {}

  /**
   * Starts `work`, or, when `shared` (the default), returns the job already running the same work: two
   * verifies or two gcs only slow each other. `what` names that work in full (default: the kind), so a
   * verify that reads every chunk never joins one that does not. Work that differs per request (a forget)
   * is not shared.
   */
  start(
    kind: string,
    tokenId: string,
    work: (progress: (p: VerifyProgress) => void) => Promise<unknown>,
    { shared = true, what = kind }: { shared?: boolean; what?: string } = {},
  ): JobStatus {
    if (shared)
      for (const j of this.jobs.values()) if (j.state === 'running' && this.work.get(j.id) === what) return j;
    const job: JobStatus = {
      id: randomBytes(32).toString('hex'),
      kind,
      state: 'running',
      startedAt: new Date().toISOString(),
      tokenId,
    };
    this.jobs.set(job.id, job);
    this.work.set(job.id, what);
    work((p) => {
      job.progress = { phase: p.phase, done: p.done, total: p.total };
    }).then(
      (result) => {
        job.state = 'done';
        job.result = result;
        job.finishedAt = new Date().toISOString();
        this.work.delete(job.id);
        this.prune();
      },
      (err) => {
        const { body, internal } = errorResponse(err);
        if (internal)
          this.log(
            JSON.stringify({
              level: 'error',
              msg: `${kind} job failed`,
              job: job.id,
              error: String((err as Error)?.stack ?? err),
            }),
          );
        job.state = 'failed';
        job.error = { code: body.code, message: body.message };
        job.finishedAt = new Date().toISOString();
        this.work.delete(job.id);
        this.prune();
      },
    );
    return job;
  }

  get(id: string): JobStatus | undefined {
    return this.jobs.get(id);
  }

  /** Every remembered job, newest first. */
  list(): JobStatus[] {
    return [...this.jobs.values()].reverse();
  }

  running(): number {
    let n = 0;
    for (const j of this.jobs.values()) if (j.state === 'running') n++;
    return n;
  }

  private prune(): void {
    const finished = [...this.jobs.values()].filter((j) => j.state !== 'running');
    for (const j of finished.slice(0, Math.max(0, finished.length - this.keep))) this.jobs.delete(j.id);
  }
}
