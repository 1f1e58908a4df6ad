import { ApiError, get, post, runJob } from '../api.js';
import { card, cardSkeletons } from '../cards.js';
import type { View } from '../context.js';
import { h, notice, replace } from '../dom.js';
import { bytes, count, localTime, ratio, shortId, utcTitle } from '../format.js';
import type { GcReport, Job, Stats } from '../types.js';

/**
 * Storage (logical, unique and stored bytes, dedup and compression ratios, per tenant) and the repository's
 * jobs: gc and verify started from here and followed to the end, and the last verify's result.
 */
export const storageView: View = (ctx, main) => {
  const cards = h('div', { class: 'cards' }, cardSkeletons(4));
  const tenants = h(
    'section',
    { class: 'card', 'aria-labelledby': 'tenants-title' },
    h('h2', { id: 'tenants-title' }, 'Per tenant'),
    h('div', { class: 'bone-block', 'aria-hidden': 'true' }),
  );
  const jobs = h(
    'section',
    { class: 'card jobs', 'aria-labelledby': 'jobs-title' },
    h('h2', { id: 'jobs-title' }, 'Jobs'),
  );
  replace(main, h('h1', null, 'Storage & jobs'), cards, tenants, jobs);
  let stopped = false;
  const timers: number[] = [];

  const loadStats = async () => {
    try {
      const s = await get<Stats>('/v1/stats');
      drawStats(s);
    } catch (err) {
      replace(cards);
      replace(
        tenants,
        h('h2', { id: 'tenants-title' }, 'Per tenant'),
        notice('error', `Statistics could not be loaded: ${(err as Error).message}`),
      );
    }
  };

  const drawStats = (s: Stats) => {
    const r = s.repository;
    if (r) {
      replace(
        cards,
        card('Logical (all snapshots)', bytes(r.logicalBytes), `${count(r.snapshots)} snapshots`),
        card('Unique data', bytes(r.rawBytes), `${count(r.uniqueChunks)} chunks`),
        card('Stored', bytes(r.storedBytes), 'after compression'),
        card(
          'Dedup × compression',
          ratio(r.dedupRatio * r.compressionRatio),
          `dedup ${ratio(r.dedupRatio)}, compression ${ratio(r.compressionRatio)}`,
        ),
      );
    } else if (s.tenant) {
      const t = s.tenant;
      replace(
        cards,
        card('Logical (all snapshots)', bytes(t.logicalBytes), `${count(t.snapshots)} snapshots`),
        card('Unique data', bytes(t.uniqueBytes), `tenant ${t.tenant}`),
        card('Dedup ratio', ratio(t.uniqueBytes ? t.logicalBytes / t.uniqueBytes : 0), 'logical / unique'),
      );
    } else {
      replace(
        cards,
        card('Logical (all snapshots)', bytes(s.logicalBytes), `${count(s.snapshots)} snapshots`),
      );
    }
    const rows = r ? r.perTenant : s.tenant ? [s.tenant] : [];
    const max = Math.max(1, ...rows.map((t) => t.logicalBytes));
    replace(
      tenants,
      h('h2', { id: 'tenants-title' }, 'Per tenant'),
      rows.length === 0
        ? notice('empty', 'No tenant has a snapshot yet.')
        : h(
            'div',
            { class: 'table-wrap' },
            h(
              'table',
              { class: 'data tenants' },
              h('caption', { class: 'sr-only' }, 'Storage per tenant'),
              h(
                'thead',
                null,
                h(
                  'tr',
                  null,
                  h('th', { scope: 'col' }, 'Tenant'),
                  ['Snapshots', 'Logical', 'Unique', 'Dedup'].map((t) =>
                    h('th', { scope: 'col', class: 'num' }, t),
                  ),
                  h('th', { scope: 'col' }, 'Logical vs unique'),
                ),
              ),
              h(
                'tbody',
                null,
                rows.map((t) =>
                  h(
                    'tr',
                    null,
                    h('th', { scope: 'row' }, t.tenant),
                    h('td', { class: 'num' }, count(t.snapshots)),
                    h('td', { class: 'num' }, bytes(t.logicalBytes)),
                    h('td', { class: 'num' }, bytes(t.uniqueBytes)),
                    h('td', { class: 'num' }, ratio(t.uniqueBytes ? t.logicalBytes / t.uniqueBytes : 0)),
                    h(
                      'td',
                      { class: 'bars', 'aria-hidden': 'true' },
                      bar('logical', t.logicalBytes / max),
                      bar('unique', t.uniqueBytes / max),
                    ),
                  ),
                ),
              ),
            ),
          ),
      rows.length
        ? h(
            'p',
            { class: 'muted legend-note' },
            h('span', { class: 'swatch logical' }),
            ' logical  ',
            h('span', { class: 'swatch unique' }),
            ' unique (a chunk shared by tenants counts in each)',
          )
        : null,
    );
  };

  // Jobs: verify runs as a server job polled to its end; gc answers when done, so it shows elapsed time.
  const verifyBox = h('div', { class: 'job', 'aria-live': 'polite' });
  const gcBox = h('div', { class: 'job', 'aria-live': 'polite' });
  const lastVerify = h(
    'div',
    { class: 'last-verify' },
    h('p', { class: 'muted' }, 'Loading the last verify…'),
  );
  const readData = h('input', { type: 'checkbox', name: 'read-data' });
  const verifyBtn = h(
    'button',
    { type: 'button', disabled: !ctx.isGlobal, onclick: () => startVerify() },
    'Start verify',
  );
  const gcBtn = h(
    'button',
    { type: 'button', class: 'secondary', disabled: !ctx.isGlobal, onclick: () => startGc() },
    'Run garbage collection',
  );

  replace(
    jobs,
    h('h2', { id: 'jobs-title' }, 'Jobs'),
    ctx.isGlobal
      ? null
      : notice(
          'info',
          'gc and verify span every tenant: they need a global admin token. This token can watch only.',
        ),
    h(
      'div',
      { class: 'grid-2' },
      h(
        'div',
        null,
        h('h3', null, 'Verify'),
        h(
          'p',
          { class: 'muted' },
          'Checks that every chunk every snapshot names is stored; with data, reads and hashes each one.',
        ),
        h(
          'div',
          { class: 'actions' },
          h('label', { class: 'check' }, readData, ' Read and hash all data (slow)'),
          verifyBtn,
        ),
        verifyBox,
        h('h3', null, 'Last verify'),
        lastVerify,
      ),
      h(
        'div',
        null,
        h('h3', null, 'Garbage collection'),
        h(
          'p',
          { class: 'muted' },
          'Deletes chunks no snapshot names (after the grace period), never one an open backup or restore may need.',
        ),
        h('div', { class: 'actions' }, gcBtn),
        gcBox,
      ),
    ),
  );

  const follow = (job: Job) => {
    drawJob(verifyBox, job);
    if (job.state !== 'running') {
      verifyBtn.disabled = !ctx.isGlobal;
      drawLastVerify(lastVerify, job);
      return;
    }
    verifyBtn.disabled = true;
    timers.push(
      window.setTimeout(async () => {
        if (stopped) return;
        try {
          follow((await get<{ job: Job }>(`/v1/jobs/${job.id}`)).job);
        } catch (err) {
          replace(verifyBox, notice('error', `Lost track of the job: ${(err as Error).message}`));
          verifyBtn.disabled = !ctx.isGlobal;
        }
      }, 500),
    );
  };

  const startVerify = async () => {
    verifyBtn.disabled = true;
    try {
      follow((await post<{ job: Job }>('/v1/verify', { readData: readData.checked })).job);
    } catch (err) {
      replace(verifyBox, notice('error', `Verify could not start: ${(err as Error).message}`));
      verifyBtn.disabled = !ctx.isGlobal;
    }
  };

  const startGc = async () => {
    gcBtn.disabled = true;
    const started = Date.now();
    const progress = h('progress', { 'aria-label': 'Garbage collection running' });
    const elapsed = h('span', null, '0 s');
    replace(gcBox, h('p', null, 'Collecting… ', elapsed), progress);
    const tick = window.setInterval(
      () => (elapsed.textContent = `${Math.round((Date.now() - started) / 1000)} s`),
      1000,
    );
    try {
      const report = await runJob<GcReport>('/v1/gc', {}, (job) => {
        if (job.progress?.total) progress.max = job.progress.total;
        if (job.progress?.total) progress.value = job.progress.done;
      });
      replace(
        gcBox,
        notice(
          'ok',
          `Done in ${report.seconds.toFixed(1)} s: deleted ${count(report.chunksDeleted)} chunks (${bytes(report.bytesFreed)}) and ${count(report.orphansDeleted)} orphans; kept ${count(report.chunksProtected)} (${count(report.chunksHeld)} for open backups and restores, the rest within the grace period).`,
        ),
      );
      void loadStats();
    } catch (err) {
      replace(gcBox, notice('error', `gc failed: ${(err as Error).message}`));
    } finally {
      clearInterval(tick);
      gcBtn.disabled = !ctx.isGlobal;
    }
  };

  void loadStats();
  void get<{ jobs: Job[] }>('/v1/jobs?kind=verify')
    .then(({ jobs: list }) => {
      const running = list.find((j) => j.state === 'running');
      const finished = list.find((j) => j.state !== 'running');
      if (finished) drawLastVerify(lastVerify, finished);
      else
        replace(
          lastVerify,
          notice('empty', 'No verify has run since the server started (results are kept in memory).'),
        );
      if (running) follow(running);
    })
    .catch((err) =>
      replace(
        lastVerify,
        err instanceof ApiError && err.status === 403
          ? notice('info', 'Jobs are shown to admin tokens.')
          : notice('error', `Jobs could not be loaded: ${(err as Error).message}`),
      ),
    );

  return () => {
    stopped = true;
    for (const t of timers) clearTimeout(t);
  };
};

function bar(kind: string, share: number): HTMLElement {
  const el = h('div', { class: `bar ${kind}` });
  // Set through the CSS object model, which the console's CSP (style-src 'self') allows.
  el.style.width = `${Math.max(0.5, share * 100).toFixed(1)}%`;
  return el;
}

function drawJob(box: HTMLElement, job: Job): void {
  if (job.state === 'running') {
    const p = job.progress;
    const pct = p && p.total > 0 ? Math.round((100 * p.done) / p.total) : undefined;
    const bar = h('progress', { max: 100, 'aria-label': 'Verify progress' });
    if (pct !== undefined) bar.value = pct;
    replace(
      box,
      h(
        'p',
        null,
        `Running: ${p ? `${p.phase} ${count(p.done)} / ${count(p.total)}` : 'starting'}${pct !== undefined ? ` (${pct} %)` : ''}`,
      ),
      bar,
    );
  } else replace(box);
}

function drawLastVerify(box: HTMLElement, job: Job): void {
  const when = job.finishedAt ?? job.startedAt;
  const head = h(
    'p',
    { class: 'muted' },
    'Finished ',
    h('span', { title: utcTitle(when) }, localTime(when)),
    ` (job ${shortId(job.id)})`,
  );
  if (job.state === 'failed' || !job.result) {
    replace(box, head, notice('error', `Verify failed: ${job.error?.message ?? 'no result'}`));
    return;
  }
  const r = job.result;
  const problems = r.problems.length + r.badManifests.length + (r.refcountMismatches ? 1 : 0);
  replace(
    box,
    head,
    r.ok
      ? notice(
          'ok',
          `OK: ${count(r.snapshotsChecked)} snapshots and ${count(r.chunksChecked)} chunks checked${r.bytesRead ? `, ${bytes(r.bytesRead)} read` : ''} in ${r.seconds.toFixed(1)} s.`,
        )
      : notice('error', `${count(problems)} problems found in ${count(r.snapshotsChecked)} snapshots.`),
    r.problems.length
      ? h(
          'ul',
          { class: 'problems' },
          r.problems
            .slice(0, 20)
            .map((p) =>
              h(
                'li',
                null,
                h('span', { class: 'mono' }, shortId(p.chunk)),
                ` ${p.kind}: ${p.detail} (in ${p.snapshots.length} snapshots)`,
              ),
            ),
        )
      : null,
    r.badManifests.length
      ? h(
          'ul',
          { class: 'problems' },
          r.badManifests.map((m) =>
            h('li', null, h('span', { class: 'mono' }, shortId(m.snapshot)), ` manifest: ${m.detail}`),
          ),
        )
      : null,
    r.refcountMismatches
      ? h('p', null, `${count(r.refcountMismatches)} index refcounts differ from the manifests.`)
      : null,
  );
}
