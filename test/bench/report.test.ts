import test from 'ava';
import {
  best,
  cpuTable,
  fastestPeerTable,
  floorTable,
  pairTable,
  type Row,
  resticTargets,
  totalCpu,
  withServerStepCpu,
} from '../../bench/lib/report.js';

const row = (tool: string, step: string, wall: number, cpu: number, more: Partial<Row> = {}): Row => ({
  tool,
  step,
  wall,
  cpu,
  rssMiB: 100,
  ...more,
});

/** Two nights and two restores of diskvault (a server's cumulative CPU), restic and borg lz4 beside it. */
function sample(): Row[] {
  return [
    row('diskvault', 'backup night0', 10, 6, { serverCpu: 4, userCpu: 5, systemCpu: 1 }),
    row('diskvault', 'backup night1', 3, 2, { serverCpu: 4.5 }),
    row('diskvault', 'backup night3', 3, 2, { serverCpu: 5, repoMiB: 660 }),
    row('diskvault', 'restore night3', 6, 5, { serverCpu: 7, extra: { round: 1 } }),
    row('diskvault', 'restore night3', 5, 5, { serverCpu: 9, extra: { round: 2 } }),
    row('restic', 'backup night0', 9, 16),
    row('restic', 'backup night1', 4, 5),
    row('restic', 'backup night3', 4, 5, { repoMiB: 600 }),
    row('restic', 'restore night3', 4, 6),
    row('borg lz4', 'backup night0', 7, 7),
    row('borg lz4', 'restore night3', 4.5, 4),
  ];
}

test('the server CPU of a step is its share of the cumulative figure, per tool', (t) => {
  const rows = withServerStepCpu(sample());
  t.deepEqual(
    rows.filter((r) => r.tool === 'diskvault').map((r) => r.serverStepCpu),
    [4, 0.5, 0.5, 2, 2],
  );
  t.is(rows.find((r) => r.tool === 'restic')?.serverStepCpu, undefined);
  t.is(totalCpu(rows[0]), 10);
  t.is(totalCpu(rows[5]), 16);
});

test('a step measured twice counts its fastest run', (t) => {
  const r = best(sample(), 'diskvault', 'restore night3');
  t.is(r?.wall, 5);
  t.deepEqual(r?.extra, { round: 2 });
});

test('each step is compared with the fastest peer at that step', (t) => {
  const lines = fastestPeerTable(withServerStepCpu(sample()));
  t.deepEqual(lines.slice(2), [
    '| backup night0 | 10.00 | 9.00 | 7.00 |  | borg lz4 | 1.43 | ≤ 1 |',
    '| backup night1 | 3.00 | 4.00 |  |  | restic | 0.75 | ≤ 1 |',
    '| backup night3 | 3.00 | 4.00 |  |  | restic | 0.75 | ≤ 1 |',
    '| restore night3 | 5.00 | 4.00 | 4.50 |  | restic | 1.25 | ≤ 1 |',
  ]);
});

test('CPU and repository ratios against restic are the ones the targets name', (t) => {
  t.deepEqual(resticTargets(withServerStepCpu(sample())), [
    'first backup CPU (agent 6.00 + server 4.00 = 10.00 s) / restic 16.00 s: 0.63 (target ≤ 0.75)',
    'backup night1 agent CPU 2.00 s (server 0.50 s) / restic 5.00 s: 0.40 (target ≤ 0.6)',
    'backup night3 agent CPU 2.00 s (server 0.50 s) / restic 5.00 s: 0.40 (target ≤ 0.6)',
    'repository after night3: 660.0 MiB / restic 600.0 MiB: 1.100 (target ≤ 1)',
  ]);
  t.deepEqual(resticTargets(sample().filter((r) => r.tool !== 'restic')), []);
});

test('the per-side table shows agent, server and total CPU next to wall time', (t) => {
  const lines = cpuTable(withServerStepCpu(sample()));
  t.is(lines.length, 2 + 11);
  t.is(lines[2], '| diskvault | backup night0 | 10.00 | 6.00 (5.00+1.00) | 4.00 | 10.00 | 100 |  |  |');
  t.is(lines[6], '| diskvault | restore night3 (run 2) | 5.00 | 5.00 | 2.00 | 7.00 | 100 |  |  |');
  t.is(lines[7], '| restic | backup night0 | 9.00 | 16.00 |  | 16.00 | 100 |  |  |');
});

test('two diskvault variants compare wall and total CPU step by step', (t) => {
  const rows = withServerStepCpu([
    row('diskvault', 'backup night0', 11, 6, { serverCpu: 5 }),
    row('dv plaintext', 'backup night0', 10, 6, { serverCpu: 4 }),
  ]);
  t.deepEqual(pairTable(rows, 'diskvault', 'dv plaintext', '≤ 1.10').slice(2), [
    '| backup night0 | 1.10 | 1.10 | ≤ 1.10 |',
  ]);
});

test('the floor table puts each side per GiB beside its floor, with restic and the fastest peer', (t) => {
  const rows = withServerStepCpu(sample());
  const floors = [
    { step: 'backup night0', agent: 4, server: 2, wall: 3 },
    { step: 'restore night3', agent: 2, server: 1, wall: 1.5 },
  ];
  const lines = floorTable(floors, rows, 2);
  const night0 = lines.find((l) => l.startsWith('| backup night0 |'));
  // Per GiB of a 2 GiB image: agent 4/2 against 6/2, server 2/2 against 4/2, total 6/2 against 10/2 (1.67),
  // restic 16/2, wall floor 3/2 against 10/2, fastest peer borg lz4 7/2.
  t.is(
    night0,
    '| backup night0 | 2.00 | 3.00 | 1.00 | 2.00 | 3.00 | 5.00 | 8.00 | 1.50 | 5.00 | 3.50 | 1.67 |',
  );
  const restore = lines.find((l) => l.startsWith('| restore night3 |'));
  // The faster of the two restores (server share 2 s) counts.
  t.is(
    restore,
    '| restore night3 | 1.00 | 2.50 | 0.50 | 1.00 | 1.50 | 3.50 | 3.00 | 0.75 | 2.50 | 2.00 | 2.33 |',
  );
});
