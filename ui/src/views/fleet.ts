import { get } from '../api.js';
import { card, cardSkeletons } from '../cards.js';
import { diskRoute, type View } from '../context.js';
import { field, h, notice, replace, skeletonRows } from '../dom.js';
import { age, bytes, count, localTime, parseHours, utcTitle } from '../format.js';
import type { DiskOverview } from '../types.js';

const THRESHOLD_KEY = 'diskvault.staleHours';
const DEFAULT_THRESHOLD_HOURS = 26;

type SortKey = 'name' | 'age' | 'size' | 'newBytes' | 'unreadable' | 'snapshots';

interface Column {
  key: SortKey;
  label: string;
  numeric: boolean;
  value: (d: DiskOverview) => number | string;
}

const COLUMNS: Column[] = [
  { key: 'name', label: 'Host / disk', numeric: false, value: (d) => `${d.tenant}/${d.host}/${d.disk}` },
  { key: 'age', label: 'Newest snapshot', numeric: true, value: (d) => Date.parse(d.newest.time) },
  { key: 'size', label: 'Size', numeric: true, value: (d) => d.newest.size },
  { key: 'newBytes', label: 'New data', numeric: true, value: (d) => d.newest.newBytes },
  { key: 'unreadable', label: 'Unreadable', numeric: true, value: (d) => d.newest.unreadableBytes },
  { key: 'snapshots', label: 'Snapshots', numeric: true, value: (d) => d.snapshots },
];

/**
 * Every disk in the caller's scope: did it back up recently (flagged past a threshold), how big, how much
 * new data the last night carried, whether the disk had unreadable sectors. Sortable and filterable.
 */
export const fleetView: View = (ctx, main) => {
  let disks: DiskOverview[] | undefined;
  let sort: { key: SortKey; dir: 1 | -1 } = { key: 'name', dir: 1 };
  const stored = parseHours(localStorage.getItem(THRESHOLD_KEY) ?? '');
  let thresholdHours = stored ?? DEFAULT_THRESHOLD_HOURS;

  const filter = h('input', { type: 'search', placeholder: 'host, disk or tenant', autocomplete: 'off' });
  const problemsOnly = h('input', { type: 'checkbox' });
  const threshold = h('input', {
    type: 'text',
    inputmode: 'decimal',
    value: String(thresholdHours),
    size: 5,
    pattern: '\\s*\\d+(\\.\\d+)?\\s*[hHdD]?\\s*',
  });
  const summary = h('div', { class: 'cards' }, cardSkeletons(4));
  const tenantCol = ctx.me.tenant === '*';
  const thead = h('thead');
  const table = h(
    'table',
    { class: 'data fleet phone-cards', 'aria-busy': 'true' },
    h('caption', { class: 'sr-only' }, 'Disks'),
    thead,
  );
  let body: HTMLTableSectionElement = skeletonRows(COLUMNS.length + (tenantCol ? 1 : 0), 5);
  table.append(body);
  const status = h('div', { class: 'table-status' });

  const isStale = (d: DiskOverview) => Date.now() - Date.parse(d.newest.time) > thresholdHours * 3600_000;
  const hasProblem = (d: DiskOverview) => isStale(d) || d.newest.unreadableBytes > 0;

  function header(): void {
    const cells = COLUMNS.map((c) => {
      const active = sort.key === c.key;
      return h(
        'th',
        {
          scope: 'col',
          class: c.numeric ? 'num' : null,
          'aria-sort': active ? (sort.dir === 1 ? 'ascending' : 'descending') : 'none',
        },
        h(
          'button',
          {
            type: 'button',
            class: 'sort',
            onclick: () => {
              sort = { key: c.key, dir: active ? (sort.dir === 1 ? -1 : 1) : c.key === 'age' ? -1 : 1 };
              draw();
            },
          },
          c.label,
          h('span', { class: 'arrow', 'aria-hidden': 'true' }, active ? (sort.dir === 1 ? '▲' : '▼') : '↕'),
        ),
      );
    });
    replace(thead, h('tr', null, tenantCol ? h('th', { scope: 'col' }, 'Tenant') : null, cells));
  }

  function draw(): void {
    header();
    if (!disks) return;
    const words = filter.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    const col = COLUMNS.find((c) => c.key === sort.key)!;
    const shown = disks
      .filter((d) =>
        words.every((w) => `${d.tenant} ${d.host} ${d.disk} ${d.host}/${d.disk}`.toLowerCase().includes(w)),
      )
      .filter((d) => !problemsOnly.checked || hasProblem(d))
      .sort((a, b) => {
        const x = col.value(a);
        const y = col.value(b);
        return (x < y ? -1 : x > y ? 1 : 0) * sort.dir;
      });
    drawSummary(disks);
    const rows = shown.map((d) => {
      const stale = isStale(d);
      const ageMs = Date.now() - Date.parse(d.newest.time);
      return h(
        'tr',
        {
          class: stale || d.newest.unreadableBytes > 0 ? 'problem' : null,
          'data-disk': `${d.host}/${d.disk}`,
        },
        tenantCol ? h('td', { 'data-label': 'Tenant' }, d.tenant) : null,
        h(
          'th',
          { scope: 'row', class: 'lead' },
          h('a', { href: diskRoute(d.tenant, d.host, d.disk) }, `${d.host} / ${d.disk}`),
        ),
        h(
          'td',
          { class: 'num', 'data-label': 'Newest' },
          h(
            'span',
            { class: stale ? 'flag bad' : 'flag good', title: utcTitle(d.newest.time) },
            stale ? h('span', { class: 'sr-only' }, 'Overdue: ') : null,
            age(ageMs),
          ),
          h('div', { class: 'sub', title: utcTitle(d.newest.time) }, localTime(d.newest.time)),
        ),
        h('td', { class: 'num', 'data-label': 'Size' }, bytes(d.newest.size)),
        h(
          'td',
          {
            class: 'num',
            'data-label': 'New data',
            title: `${count(d.newest.newChunks)} new chunks over the snapshot before`,
          },
          bytes(d.newest.newBytes),
        ),
        h(
          'td',
          { class: 'num', 'data-label': 'Unreadable' },
          d.newest.unreadableBytes > 0
            ? h('span', { class: 'flag bad' }, bytes(d.newest.unreadableBytes))
            : h('span', { class: 'muted' }, 'none'),
        ),
        h('td', { class: 'num', 'data-label': 'Snapshots' }, count(d.snapshots)),
      );
    });
    const next = h('tbody', null, rows);
    body.replaceWith(next);
    body = next;
    table.removeAttribute('aria-busy');
    if (disks.length === 0)
      replace(
        status,
        notice('empty', 'No disk has a snapshot yet. Back one up with diskvault backup and it appears here.'),
      );
    else if (shown.length === 0) replace(status, notice('empty', 'No disk matches the filter.'));
    else replace(status, h('p', { class: 'muted' }, `${shown.length} of ${disks.length} disks`));
  }

  function drawSummary(all: DiskOverview[]): void {
    const stale = all.filter(isStale).length;
    const unreadable = all.filter((d) => d.newest.unreadableBytes > 0).length;
    const hosts = new Set(all.map((d) => `${d.tenant}/${d.host}`)).size;
    replace(
      summary,
      card('Disks', count(all.length), `${count(hosts)} hosts`),
      card(
        `Overdue (> ${thresholdHours} h)`,
        count(stale),
        stale ? 'no recent snapshot' : 'all backed up',
        stale ? 'bad' : 'good',
      ),
      card(
        'Unreadable sectors',
        count(unreadable),
        unreadable ? 'disks to check' : 'no disk',
        unreadable ? 'bad' : 'good',
      ),
      card(
        'New data, last snapshots',
        bytes(all.reduce((n, d) => n + d.newest.newBytes, 0)),
        'over the snapshot before',
      ),
    );
  }

  filter.addEventListener('input', draw);
  problemsOnly.addEventListener('change', draw);
  threshold.addEventListener('change', () => {
    const v = parseHours(threshold.value);
    threshold.setAttribute('aria-invalid', v ? 'false' : 'true');
    if (!v) return;
    thresholdHours = v;
    localStorage.setItem(THRESHOLD_KEY, String(v));
    draw();
  });

  const load = async () => {
    try {
      disks = (await get<{ disks: DiskOverview[] }>('/v1/disks')).disks;
      draw();
    } catch (err) {
      table.removeAttribute('aria-busy');
      body.replaceChildren();
      replace(summary);
      replace(
        status,
        notice(
          'error',
          `The fleet could not be loaded: ${(err as Error).message}. `,
          h(
            'button',
            { type: 'button', class: 'secondary small', onclick: () => ctx.go('#/fleet') },
            'Retry',
          ),
        ),
      );
    }
  };

  replace(
    main,
    h('h1', null, 'Fleet'),
    summary,
    h(
      'div',
      { class: 'toolbar', role: 'search' },
      field('Filter', filter),
      field('Overdue after (hours)', threshold),
      h('label', { class: 'check' }, problemsOnly, ' Only disks needing attention'),
    ),
    h('div', { class: 'table-wrap' }, table),
    status,
  );
  header();
  void load();
  // Ages move on while the page stays open.
  const tick = setInterval(() => disks && draw(), 60_000);
  return () => clearInterval(tick);
};
