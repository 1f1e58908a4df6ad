/**
 * The benchmark's tables: per-side CPU next to wall time for every tool and step, and the ratios issue
 * targets are stated in (each step against the fastest peer, CPU against restic, repository size).
 * Pure functions of the recorded rows, so what is printed can be tested without running a benchmark.
 */

export interface Row {
  tool: string;
  step: string;
  wall: number;
  /** The measured command's CPU (user + system): the agent's for diskvault, the whole tool's for a peer. */
  cpu: number;
  /** The parts of `cpu` (a step with far more system time than usual waited on the kernel: writeback, reclaim). */
  userCpu?: number;
  systemCpu?: number;
  rssMiB: number;
  serverRssMiB?: number;
  /** The server process's CPU since it started (cumulative: see serverStepCpu for one step's share). */
  serverCpu?: number;
  /** The server's CPU (user + system) during this step alone. */
  serverStepCpu?: number;
  repoMiB?: number;
  extra?: Record<string, unknown>;
}

/** The peers a diskvault step is held against: the target is "no slower than the fastest of them". */
export const PEERS = ['restic', 'borg lz4', 'borg zstd'] as const;

/** Issue targets on CPU seconds: first backup (agent + server) against restic, later nights' agent CPU. */
export const FIRST_BACKUP_CPU_TARGET = 0.75;
export const LATER_NIGHT_AGENT_CPU_TARGET = 0.6;

/** Agent plus server CPU of a step (a peer has no server: its whole CPU is `cpu`). */
export function totalCpu(r: Row): number {
  return r.cpu + (r.serverStepCpu ?? 0);
}

/**
 * The row of a tool's step; a step measured more than once (restores, best of two) gives its fastest run,
 * the figure compared.
 */
export function best(rows: Row[], tool: string, step: string): Row | undefined {
  let found: Row | undefined;
  for (const r of rows) if (r.tool === tool && r.step === step && (!found || r.wall < found.wall)) found = r;
  return found;
}

/**
 * Turns the server's cumulative CPU into each step's share: the difference from the previous row of the same
 * tool (the same server process), the first row's from zero.
 */
export function withServerStepCpu(rows: Row[]): Row[] {
  const last = new Map<string, number>();
  return rows.map((r) => {
    if (r.serverCpu === undefined) return r;
    const before = last.get(r.tool) ?? 0;
    last.set(r.tool, r.serverCpu);
    return { ...r, serverStepCpu: r.serverCpu - before };
  });
}

const f2 = (n: number | undefined) => (n === undefined ? '' : n.toFixed(2));

/** Every row: wall, then the agent's CPU (user + system, and the parts), the server's, and their sum. */
export function cpuTable(rows: Row[]): string[] {
  const head = [
    'tool',
    'step',
    'wall s',
    'agent cpu s (user+sys)',
    'server cpu s',
    'total cpu s',
    'agent RSS MiB',
    'server RSS MiB',
    'repo MiB',
  ];
  const lines = [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`];
  for (const r of rows) {
    const parts =
      r.userCpu !== undefined && r.systemCpu !== undefined ? ` (${f2(r.userCpu)}+${f2(r.systemCpu)})` : '';
    const round = typeof r.extra?.round === 'number' ? ` (run ${r.extra.round})` : '';
    lines.push(
      `| ${r.tool} | ${r.step}${round} | ${f2(r.wall)} | ${f2(r.cpu)}${parts} | ${f2(r.serverStepCpu)} | ${f2(totalCpu(r))} | ${r.rssMiB.toFixed(0)} | ${r.serverRssMiB?.toFixed(0) ?? ''} | ${r.repoMiB?.toFixed(1) ?? ''} |`,
    );
  }
  return lines;
}

/** The steps of `tool`, in the order first measured. */
function stepsOf(rows: Row[], tool: string): string[] {
  return [...new Set(rows.filter((r) => r.tool === tool).map((r) => r.step))];
}

/** Each step of `tool` against the fastest of restic, borg lz4 and borg zstd at that step (target ≤ 1). */
export function fastestPeerTable(rows: Row[], tool = 'diskvault'): string[] {
  const lines = [
    `| step | ${tool} wall s | restic | borg lz4 | borg zstd | fastest peer | ${tool} / fastest | target |`,
    '|---|---|---|---|---|---|---|---|',
  ];
  for (const step of stepsOf(rows, tool)) {
    const dv = best(rows, tool, step);
    const peers = PEERS.map((p) => best(rows, p, step));
    const present = peers.filter((p): p is Row => p !== undefined);
    if (!dv || present.length === 0) continue;
    const fastest = present.reduce((a, b) => (b.wall < a.wall ? b : a));
    lines.push(
      `| ${step} | ${f2(dv.wall)} | ${peers.map((p) => f2(p?.wall)).join(' | ')} | ${fastest.tool} | ${(dv.wall / fastest.wall).toFixed(2)} | ≤ 1 |`,
    );
  }
  return lines;
}

/** The CPU and size ratios against restic the targets name; empty when restic did not run. */
export function resticTargets(rows: Row[], tool = 'diskvault'): string[] {
  const lines: string[] = [];
  const first = best(rows, tool, 'backup night0');
  const rFirst = best(rows, 'restic', 'backup night0');
  if (first && rFirst)
    lines.push(
      `first backup CPU (agent ${f2(first.cpu)} + server ${f2(first.serverStepCpu ?? 0)} = ${f2(totalCpu(first))} s) / restic ${f2(rFirst.cpu)} s: ${(totalCpu(first) / rFirst.cpu).toFixed(2)} (target ≤ ${FIRST_BACKUP_CPU_TARGET})`,
    );
  for (const step of stepsOf(rows, tool).filter(
    (s) => s.startsWith('backup night') && s !== 'backup night0',
  )) {
    const dv = best(rows, tool, step);
    const r = best(rows, 'restic', step);
    if (dv && r)
      lines.push(
        `${step} agent CPU ${f2(dv.cpu)} s (server ${f2(dv.serverStepCpu ?? 0)} s) / restic ${f2(r.cpu)} s: ${(dv.cpu / r.cpu).toFixed(2)} (target ≤ ${LATER_NIGHT_AGENT_CPU_TARGET})`,
      );
  }
  const repo = best(rows, tool, 'backup night3')?.repoMiB;
  const rRepo = best(rows, 'restic', 'backup night3')?.repoMiB;
  if (repo !== undefined && rRepo !== undefined)
    lines.push(
      `repository after night3: ${repo.toFixed(1)} MiB / restic ${rRepo.toFixed(1)} MiB: ${(repo / rRepo).toFixed(3)} (target ≤ 1)`,
    );
  return lines;
}

/** One tool's steps against another's (encrypted against plaintext), wall and total CPU. */
export function pairTable(rows: Row[], a: string, b: string, target: string): string[] {
  const lines = [`| step | wall ${a}/${b} | total cpu ${a}/${b} | target |`, '|---|---|---|---|'];
  for (const step of stepsOf(rows, a)) {
    const x = best(rows, a, step);
    const y = best(rows, b, step);
    if (!x || !y) continue;
    lines.push(
      `| ${step} | ${(x.wall / y.wall).toFixed(2)} | ${(totalCpu(x) / totalCpu(y)).toFixed(2)} | ${target} |`,
    );
  }
  return lines;
}

/** A step's floor (bench/lib/floor.ts): the CPU each side cannot avoid and the wall time it allows. */
export interface FloorRow {
  step: string;
  agent: number;
  server: number;
  wall: number;
}

/**
 * Each step's floor against what `tool` spends, per GiB of image: agent, server and total CPU, and wall
 * time; restic's total and the fastest peer's wall beside them, so a target below the floor shows as such.
 */
export function floorTable(floors: FloorRow[], rows: Row[], imageGiB: number, tool = 'diskvault'): string[] {
  const g = (n: number | undefined) => (n === undefined ? '' : (n / imageGiB).toFixed(2));
  const lines = [
    `CPU and wall seconds per GiB of image: the floor (required work at this machine's rates) against ${tool}`,
    '',
    '| step | agent floor | agent | server floor | server | total floor | total | restic total | wall floor | wall | fastest peer wall | total / floor |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|',
  ];
  for (const f of floors) {
    const dv = best(rows, tool, f.step);
    const restic = best(rows, 'restic', f.step);
    const peers = PEERS.map((p) => best(rows, p, f.step)).filter((p): p is Row => p !== undefined);
    const fastest = peers.length > 0 ? Math.min(...peers.map((p) => p.wall)) : undefined;
    const floorTotal = f.agent + f.server;
    lines.push(
      `| ${f.step} | ${g(f.agent)} | ${g(dv?.cpu)} | ${g(f.server)} | ${g(dv?.serverStepCpu)} | ${g(floorTotal)} | ${g(dv && totalCpu(dv))} | ${g(restic?.cpu)} | ${g(f.wall)} | ${g(dv?.wall)} | ${g(fastest)} | ${dv ? (totalCpu(dv) / floorTotal).toFixed(2) : ''} |`,
    );
  }
  return lines;
}
