/** The /v1 answers the console reads (the server's api/protocol.ts and api/routes/*, as JSON). */
export interface Whoami {
  tokenId: string;
  role: string;
  tenant: string;
  hosts: string[];
}

export interface Snapshot {
  id: string;
  host: string;
  disk: string;
  time: string;
  size: number;
  sha256: string;
  chunkCount: number;
  tags: string[];
  unreadable: [number, number][];
  sourceFormat: string;
  tenant: string;
}

export interface NewData {
  newChunks: number;
  newBytes: number;
}

export interface DiskOverview {
  tenant: string;
  host: string;
  disk: string;
  snapshots: number;
  newest: { id: string; time: string; size: number; unreadableBytes: number } & NewData;
}

export interface Timeline {
  tenant: string;
  host: string;
  disk: string;
  snapshots: (Snapshot & NewData)[];
}

export interface RetentionPolicy {
  last?: number;
  hourly?: number;
  daily?: number;
  weekly?: number;
  monthly?: number;
  yearly?: number;
  within?: string;
  tags?: string[];
}

export interface ForgetPlan {
  groups: {
    host: string;
    disk: string;
    keep: { snapshot: Snapshot; reasons: string[] }[];
    remove: Snapshot[];
  }[];
}

export interface GcReport {
  chunksDeleted: number;
  bytesFreed: number;
  orphansDeleted: number;
  chunksProtected: number;
  /** Of those, kept because an open backup session or a snapshot lease may still need them. */
  chunksHeld: number;
  seconds: number;
}

export interface ForgetResponse {
  plan: ForgetPlan;
  dryRun: boolean;
  removed: number;
  gc?: GcReport;
}

export interface RepoStats {
  snapshots: number;
  logicalBytes: number;
  uniqueChunks: number;
  rawBytes: number;
  storedBytes: number;
  dedupRatio: number;
  compressionRatio: number;
  perTenant: { tenant: string; snapshots: number; logicalBytes: number; uniqueBytes: number }[];
}

export interface Stats {
  scope: 'repository' | 'tenant' | 'hosts';
  snapshots: number;
  logicalBytes: number;
  repository?: RepoStats;
  tenant?: { tenant: string; snapshots: number; logicalBytes: number; uniqueBytes: number };
}

export interface VerifyReport {
  ok: boolean;
  snapshotsChecked: number;
  chunksChecked: number;
  bytesRead: number;
  problems: { chunk: string; kind: string; snapshots: string[]; detail: string }[];
  badManifests: { snapshot: string; detail: string }[];
  refcountMismatches: number;
  seconds: number;
}

export interface Job {
  id: string;
  kind: string;
  state: 'running' | 'done' | 'failed';
  startedAt: string;
  finishedAt?: string;
  progress?: { phase: string; done: number; total: number };
  result?: VerifyReport;
  error?: { code: string; message: string };
}

export interface TokenInfo {
  id: string;
  role: string;
  hosts: string[];
  tenant: string;
  created: string;
}
