import uPlot from 'uplot';
import { get, query } from '../api.js';
import type { View } from '../context.js';
import { copyable, h, notice, replace, skeletonRows } from '../dom.js';
import { bytes, count, localTime, shortId, utcTitle } from '../format.js';
import type { Snapshot, Timeline } from '../types.js';

type Entry = Timeline['snapshots'][number];

/**
 * One disk: a chart of its size and each night's new data, every snapshot with its details (time, SHA-256,
 * chunks, unreadable ranges, tags), and the exact command that restores the chosen one.
 */
export const diskView: View = (ctx, main, args) => {
  const [tenant, host, disk] = args;
  if (!host || !disk) {
    replace(
      main,
      h('h1', null, 'Disk'),
      notice('error', 'No disk named in the address. Pick one in the fleet.'),
    );
    return;
  }
  const chartBox = h('div', {
    class: 'chart',
    role: 'img',
    'aria-label': `Size and new data per snapshot of ${host}/${disk}`,
  });
  const chartHint = h(
    'p',
    { class: 'muted legend-note' },
    'Line: image size. Bars: new data, the chunks a snapshot holds that the one before it did not (the first snapshot: all of them).',
  );
  const tbody = skeletonRows(6, 5);
  const table = h(
    'table',
    { class: 'data snapshots phone-cards', 'aria-busy': 'true' },
    h('caption', { class: 'sr-only' }, `Snapshots of ${host}/${disk}, newest first`),
    h(
      'thead',
      null,
      h(
        'tr',
        null,
        ['Time', 'Snapshot', 'Size', 'New data', 'Unreadable', 'Tags'].map((t, i) =>
          h('th', { scope: 'col', class: i >= 2 && i <= 4 ? 'num' : null }, t),
        ),
      ),
    ),
    tbody,
  );
  const details = h(
    'section',
    { class: 'card details', 'aria-labelledby': 'details-title' },
    h('h2', { id: 'details-title' }, 'Snapshot'),
    h('div', { class: 'bone-block', 'aria-hidden': 'true' }),
  );
  const status = h('div');

  replace(
    main,
    h(
      'p',
      { class: 'crumbs' },
      h('a', { href: '#/fleet' }, 'Fleet'),
      ' › ',
      ctx.me.tenant === '*' ? `${tenant} › ` : '',
      `${host} / ${disk}`,
    ),
    h('h1', null, `${host} / ${disk}`),
    status,
    h(
      'section',
      { class: 'card', 'aria-labelledby': 'timeline-title' },
      h('h2', { id: 'timeline-title' }, 'Timeline'),
      chartBox,
      chartHint,
    ),
    h('div', { class: 'split' }, h('div', { class: 'table-wrap' }, table), details),
  );

  let plot: uPlot | undefined;
  let resize: ResizeObserver | undefined;

  const select = (entries: Entry[], chosen: Entry) => {
    for (const tr of table.querySelectorAll('tbody tr')) {
      const on = (tr as HTMLElement).dataset.id === chosen.id;
      tr.classList.toggle('selected', on);
      tr.querySelector('button')?.setAttribute('aria-pressed', String(on));
    }
    drawDetails(details, chosen, entries);
  };

  const load = async () => {
    let tl: Timeline;
    try {
      tl = await get<Timeline>(
        `/v1/timeline${query({ host, disk, tenant: ctx.me.tenant === '*' ? tenant : undefined })}`,
      );
    } catch (err) {
      table.removeAttribute('aria-busy');
      tbody.replaceChildren();
      replace(details, h('h2', null, 'Snapshot'), h('p', { class: 'muted' }, 'Nothing to show.'));
      replace(status, notice('error', `This disk could not be loaded: ${(err as Error).message}`));
      return;
    }
    const entries = tl.snapshots;
    const newestFirst = [...entries].reverse();
    const rows = newestFirst.map((s) => {
      const unreadable = s.unreadable.reduce((n, [, l]) => n + l, 0);
      return h(
        'tr',
        { 'data-id': s.id },
        h('td', { class: 'nowrap lead', title: utcTitle(s.time) }, localTime(s.time)),
        h(
          'td',
          { 'data-label': 'Snapshot' },
          h(
            'button',
            {
              type: 'button',
              class: 'link mono',
              'aria-pressed': 'false',
              title: s.id,
              onclick: () => select(entries, s),
            },
            shortId(s.id),
          ),
        ),
        h('td', { class: 'num', 'data-label': 'Size' }, bytes(s.size)),
        h(
          'td',
          { class: 'num', 'data-label': 'New data', title: `${count(s.newChunks)} chunks` },
          bytes(s.newBytes),
        ),
        h(
          'td',
          { class: 'num', 'data-label': 'Unreadable' },
          unreadable
            ? h('span', { class: 'flag bad' }, bytes(unreadable))
            : h('span', { class: 'muted' }, 'none'),
        ),
        h(
          'td',
          { 'data-label': 'Tags' },
          s.tags.length
            ? s.tags.map((t) => h('span', { class: 'tag' }, t))
            : h('span', { class: 'muted' }, '–'),
        ),
      );
    });
    tbody.replaceChildren(...rows);
    tbody.classList.remove('skeleton');
    tbody.removeAttribute('aria-hidden');
    table.removeAttribute('aria-busy');
    if (newestFirst.length) select(entries, newestFirst[0]);
    ({ plot, resize } = drawChart(chartBox, entries));
  };
  void load();
  return () => {
    resize?.disconnect();
    plot?.destroy();
  };
};

function drawDetails(box: HTMLElement, s: Entry, entries: Entry[]): void {
  const index = entries.findIndex((e) => e.id === s.id);
  const previous = index > 0 ? entries[index - 1] : undefined;
  const target = `${s.host}-${s.disk}.img`;
  const command = `diskvault restore ${s.id} ${target} --server ${location.origin}`;
  const deviceCommand = `diskvault restore ${s.id} /dev/sdX --server ${location.origin}`;
  replace(
    box,
    h('h2', { id: 'details-title' }, 'Snapshot ', h('span', { class: 'mono' }, shortId(s.id))),
    h(
      'dl',
      null,
      item(
        'Time',
        h('span', { title: utcTitle(s.time) }, localTime(s.time)),
        h('div', { class: 'sub' }, utcTitle(s.time)),
      ),
      item('Snapshot id', h('span', { class: 'mono wrap' }, s.id)),
      item('SHA-256 of the image', h('span', { class: 'mono wrap' }, s.sha256)),
      item('Size', `${bytes(s.size)} (${count(s.size)} bytes)`),
      item('Chunks', count(s.chunkCount)),
      item(
        'New data',
        `${bytes(s.newBytes)} in ${count(s.newChunks)} chunks`,
        h('div', { class: 'sub' }, previous ? `over ${shortId(previous.id)}` : 'first snapshot of this disk'),
      ),
      item('Source format', s.sourceFormat),
      item(
        'Tags',
        s.tags.length
          ? s.tags.map((t) => h('span', { class: 'tag' }, t))
          : h('span', { class: 'muted' }, 'none'),
      ),
      item('Unreadable ranges', unreadableList(s)),
    ),
    h('h3', null, 'Restore'),
    h(
      'p',
      { class: 'muted' },
      'With an agent token of ',
      h('b', null, s.host),
      ' (or an admin token) in DISKVAULT_TOKEN, to a new file:',
    ),
    copyable(command, 'the restore command'),
    h('p', { class: 'muted' }, 'or onto a disk (not mounted, at least as large; check the device name):'),
    copyable(deviceCommand, 'the restore-to-device command'),
  );
}

function item(term: string, ...value: (Node | string | Node[])[]): HTMLElement[] {
  return [h('dt', null, term), h('dd', null, ...value)];
}

function unreadableList(s: Snapshot): Node {
  if (s.unreadable.length === 0) return h('span', { class: 'muted' }, 'none: every sector was read');
  const shown = s.unreadable.slice(0, 50);
  return h(
    'div',
    null,
    h(
      'span',
      { class: 'flag bad' },
      `${count(s.unreadable.length)} ranges, ${bytes(s.unreadable.reduce((n, [, l]) => n + l, 0))} stored as zeros`,
    ),
    h(
      'ul',
      { class: 'ranges mono' },
      shown.map(([offset, length]) =>
        h('li', null, `${count(offset)} – ${count(offset + length)} (${bytes(length)})`),
      ),
    ),
    s.unreadable.length > shown.length
      ? h('p', { class: 'muted' }, `and ${count(s.unreadable.length - shown.length)} more`)
      : null,
  );
}

function cssVar(name: string): string {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function drawChart(box: HTMLElement, entries: Entry[]): { plot?: uPlot; resize?: ResizeObserver } {
  if (entries.length === 0) {
    replace(box, notice('empty', 'No snapshots.'));
    return {};
  }
  box.replaceChildren();
  const xs = entries.map((e) => Date.parse(e.time) / 1000);
  const sizes = entries.map((e) => e.size);
  const fresh = entries.map((e) => e.newBytes);
  const fg = cssVar('--fg-muted');
  const grid = cssVar('--grid');
  const DAY = 86_400;
  // Half a night of room on each side, so the first and last bars are whole.
  const pad = xs.length > 1 ? Math.min(DAY, (xs[xs.length - 1] - xs[0]) / (xs.length - 1)) / 2 : DAY / 2;
  const width = () => Math.max(260, box.clientWidth);
  const opts: uPlot.Options = {
    width: width(),
    height: 240,
    legend: { live: false },
    cursor: { drag: { x: false, y: false } },
    scales: {
      x: { time: true, range: () => [xs[0] - pad, xs[xs.length - 1] + pad] },
      bytes: { range: (_u, _min, max) => [0, max * 1.1 || 1] },
    },
    axes: [
      {
        stroke: fg,
        grid: { stroke: grid, width: 1 },
        ticks: { stroke: grid, width: 1 },
        space: 70,
        // Nights, not hours: a snapshot series is read by the day.
        incrs: [DAY, 2 * DAY, 7 * DAY, 14 * DAY, 30 * DAY, 91 * DAY, 365 * DAY],
        values: (_u, splits) =>
          splits.map((v) =>
            new Date(v * 1000).toLocaleDateString(undefined, { month: 'short', day: 'numeric' }),
          ),
      },
      {
        scale: 'bytes',
        stroke: fg,
        grid: { stroke: grid, width: 1 },
        ticks: { stroke: grid, width: 1 },
        size: 84,
        values: (_u, splits) => splits.map((v) => bytes(v)),
      },
    ],
    series: [
      {},
      {
        label: 'Image size',
        scale: 'bytes',
        stroke: cssVar('--accent'),
        width: 2,
        points: { show: true, size: 6 },
      },
      {
        label: 'New data',
        scale: 'bytes',
        stroke: cssVar('--accent-2'),
        fill: cssVar('--accent-2-fill'),
        paths: uPlot.paths.bars?.({ size: [0.6, 40] }),
        points: { show: false },
      },
    ],
  };
  const plot = new uPlot(opts, [xs, sizes, fresh], box);
  const resize = new ResizeObserver(() => plot.setSize({ width: width(), height: 240 }));
  resize.observe(box);
  return { plot, resize };
}
