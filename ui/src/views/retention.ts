import { get, post, runJob } from '../api.js';
import type { View } from '../context.js';
import { field, h, notice, replace } from '../dom.js';
import { bytes, count, localTime, plural, shortId, utcTitle } from '../format.js';
import type { DiskOverview, ForgetPlan, ForgetResponse, RetentionPolicy } from '../types.js';

/** The reason the server gives a snapshot it kept because the preview applied did not remove it. */
const NOT_IN_PREVIEW = 'not removed in the previewed plan';

const COUNT_RULES = [
  ['last', 'Keep last'],
  ['hourly', 'Hourly'],
  ['daily', 'Daily'],
  ['weekly', 'Weekly'],
  ['monthly', 'Monthly'],
  ['yearly', 'Yearly'],
] as const;

const PRESETS: { label: string; policy: RetentionPolicy }[] = [
  { label: '7 daily, 4 weekly, 12 monthly', policy: { daily: 7, weekly: 4, monthly: 12 } },
  {
    label: '14 daily, 8 weekly, 24 monthly, 5 yearly',
    policy: { daily: 14, weekly: 8, monthly: 24, yearly: 5 },
  },
  { label: 'Everything from the last 30 days', policy: { within: '30d' } },
  { label: 'The last 10 snapshots', policy: { last: 10 } },
];

/**
 * Retention: a policy (typed or from a preset) for every disk or one host/disk, previewed as the exact plan
 * `diskvault forget --dry-run` prints (the same POST /v1/forget with dryRun), then applied after a
 * confirmation, with an optional prune.
 */
export const retentionView: View = (ctx, main) => {
  const hostSel = h('select', { name: 'host' }, h('option', { value: '' }, 'Every host'));
  const diskSel = h('select', { name: 'disk' }, h('option', { value: '' }, 'Every disk'));
  const counts = Object.fromEntries(
    COUNT_RULES.map(([key]) => [
      key,
      h('input', { type: 'number', min: -1, step: 1, inputmode: 'numeric', name: key }),
    ]),
  ) as Record<(typeof COUNT_RULES)[number][0], HTMLInputElement>;
  const within = h('input', {
    type: 'text',
    name: 'within',
    placeholder: 'e.g. 30d or 1y6m',
    pattern: '(\\d+[ymdh])+',
    autocomplete: 'off',
  });
  const tags = h('input', { type: 'text', name: 'tags', placeholder: 'tag, tag', autocomplete: 'off' });
  const preset = h(
    'select',
    { name: 'preset' },
    h('option', { value: '' }, 'Choose a preset…'),
    PRESETS.map((p, i) => h('option', { value: String(i) }, p.label)),
  );
  const formStatus = h('div');
  const result = h('section', { class: 'plan', 'aria-live': 'polite', 'aria-labelledby': 'plan-title' });
  const previewBtn = h('button', { type: 'submit' }, 'Preview');
  let disks: DiskOverview[] = [];
  let previewed: { policy: RetentionPolicy; host?: string; disk?: string; plan: ForgetPlan } | undefined;

  const fillDisks = () => {
    const host = hostSel.value;
    const names = [...new Set(disks.filter((d) => !host || d.host === host).map((d) => d.disk))].sort();
    const keep = diskSel.value;
    replace(
      diskSel,
      h('option', { value: '' }, 'Every disk'),
      names.map((n) => h('option', { value: n }, n)),
    );
    if (names.includes(keep)) diskSel.value = keep;
  };
  hostSel.addEventListener('change', fillDisks);
  preset.addEventListener('change', () => {
    const p = PRESETS[Number(preset.value)]?.policy;
    if (!p) return;
    for (const [key] of COUNT_RULES) counts[key].value = p[key] !== undefined ? String(p[key]) : '';
    within.value = p.within ?? '';
    tags.value = (p.tags ?? []).join(', ');
  });

  const readPolicy = (): RetentionPolicy | string => {
    const policy: RetentionPolicy = {};
    for (const [key, label] of COUNT_RULES) {
      const v = counts[key].value.trim();
      if (!v) continue;
      if (!/^-?\d+$/.test(v) || Number(v) < -1) return `${label} needs a whole number (-1 keeps all)`;
      policy[key] = Number(v);
    }
    const w = within.value.trim();
    if (w) {
      if (!/^(\d+[ymdh])+$/.test(w)) return 'Keep within needs a duration like 30d or 1y6m (y, m, d, h)';
      policy.within = w;
    }
    const t = tags.value.split(/[\s,]+/).filter(Boolean);
    if (t.length) policy.tags = t;
    if (Object.keys(policy).length === 0)
      return 'Give at least one rule: a policy with none would remove everything.';
    return policy;
  };

  const scope = () => ({
    ...(hostSel.value ? { host: hostSel.value } : {}),
    ...(diskSel.value ? { disk: diskSel.value } : {}),
  });

  const form = h(
    'form',
    {
      class: 'card policy',
      'aria-labelledby': 'policy-title',
      onsubmit: async (e: Event) => {
        e.preventDefault();
        const policy = readPolicy();
        if (typeof policy === 'string') {
          replace(formStatus, notice('error', policy));
          return;
        }
        replace(formStatus);
        previewBtn.disabled = true;
        result.setAttribute('aria-busy', 'true');
        try {
          const out = await post<ForgetResponse>('/v1/forget', { policy, ...scope(), dryRun: true });
          previewed = { policy, ...scope(), plan: out.plan };
          drawPlan(out.plan);
        } catch (err) {
          previewed = undefined;
          replace(result, notice('error', `The preview failed: ${(err as Error).message}`));
        } finally {
          previewBtn.disabled = false;
          result.removeAttribute('aria-busy');
        }
      },
    },
    h('h2', { id: 'policy-title' }, 'Policy'),
    h('div', { class: 'grid-2' }, field('Host', hostSel), field('Disk', diskSel)),
    field('Preset', preset),
    h(
      'fieldset',
      null,
      h('legend', null, 'Keep the newest snapshot of each …'),
      h(
        'div',
        { class: 'grid-6' },
        COUNT_RULES.map(([key, label]) => field(label, counts[key])),
      ),
    ),
    h(
      'div',
      { class: 'grid-2' },
      field('Keep within', within, 'Everything newer than this, like 30d'),
      field('Keep tags', tags, 'Snapshots with any of these tags'),
    ),
    h(
      'div',
      { class: 'actions' },
      previewBtn,
      h('span', { class: 'muted' }, 'Nothing is removed until you apply the preview.'),
    ),
    formStatus,
  );

  const drawPlan = (plan: ForgetPlan) => {
    const kept = plan.groups.reduce((n, g) => n + g.keep.length, 0);
    const removed = plan.groups.reduce((n, g) => n + g.remove.length, 0);
    const removedBytes = plan.groups.reduce((n, g) => n + g.remove.reduce((m, s) => m + s.size, 0), 0);
    const apply = h(
      'button',
      {
        type: 'button',
        class: 'danger',
        disabled: !ctx.canChange || removed === 0,
        onclick: () => confirmApply(),
      },
      `Apply: remove ${plural(removed, 'snapshot')}`,
    );
    replace(
      result,
      h('h2', { id: 'plan-title' }, 'Preview'),
      h(
        'p',
        { class: 'plan-summary' },
        `${plural(plan.groups.length, 'disk')}: keep ${count(kept)}, remove ${plural(removed, 'snapshot')}`,
        removed ? ` (${bytes(removedBytes)} of images; gc frees only what no other snapshot shares)` : '',
        '.',
      ),
      plan.groups.length === 0 ? notice('empty', 'No snapshots in this scope.') : null,
      h(
        'div',
        { class: 'actions' },
        apply,
        ctx.canChange ? null : h('span', { class: 'muted' }, 'Read-only: applying needs an admin token.'),
      ),
      plan.groups.map((g) => {
        const rows = [
          ...g.keep.map((k) => ({ s: k.snapshot, keep: true, reasons: k.reasons })),
          ...g.remove.map((s) => ({ s, keep: false, reasons: [] as string[] })),
        ].sort((a, b) => Date.parse(b.s.time) - Date.parse(a.s.time));
        return h(
          'div',
          { class: 'table-wrap' },
          h(
            'table',
            { class: 'data plan-group', 'data-group': `${g.host}/${g.disk}` },
            h('caption', null, `${g.host} / ${g.disk}: keep ${g.keep.length}, remove ${g.remove.length}`),
            h(
              'thead',
              null,
              h(
                'tr',
                null,
                ['Time', 'Snapshot', 'Decision', 'Why kept'].map((t) => h('th', { scope: 'col' }, t)),
              ),
            ),
            h(
              'tbody',
              null,
              rows.map((r) =>
                h(
                  'tr',
                  {
                    'data-id': r.s.id,
                    'data-decision': r.keep ? 'keep' : 'remove',
                    class: r.keep ? null : 'removed',
                  },
                  h('td', { title: utcTitle(r.s.time) }, localTime(r.s.time)),
                  h('td', { class: 'mono', title: r.s.id }, shortId(r.s.id)),
                  h(
                    'td',
                    null,
                    h('span', { class: r.keep ? 'flag good' : 'flag bad' }, r.keep ? 'keep' : 'remove'),
                  ),
                  h('td', null, r.reasons.join(', ')),
                ),
              ),
            ),
          ),
        );
      }),
    );
  };

  const dialog = h('dialog', { 'aria-labelledby': 'confirm-title', class: 'card' });
  const confirmApply = () => {
    if (!previewed) return;
    const p = previewed;
    const removed = p.plan.groups.reduce((n, g) => n + g.remove.length, 0);
    const prune = h('input', { type: 'checkbox', name: 'prune', disabled: !ctx.isGlobal });
    const go = h('button', { type: 'submit', class: 'danger' }, `Remove ${plural(removed, 'snapshot')}`);
    const cancel = h(
      'button',
      { type: 'button', class: 'secondary', onclick: () => dialog.close() },
      'Cancel',
    );
    const status = h('div');
    replace(
      dialog,
      h(
        'form',
        {
          method: 'dialog',
          onsubmit: async (e: Event) => {
            e.preventDefault();
            go.disabled = true;
            cancel.disabled = true;
            replace(
              status,
              notice('info', prune.checked ? 'Removing, then collecting garbage…' : 'Removing…'),
            );
            try {
              const out = await runJob<ForgetResponse>('/v1/forget', {
                policy: p.policy,
                host: p.host,
                disk: p.disk,
                dryRun: false,
                prune: prune.checked,
                // Exactly what was previewed: a backup committed meanwhile must not make it remove more.
                removeOnly: p.plan.groups.flatMap((g) => g.remove.map((s) => s.id)),
              });
              dialog.close();
              previewed = undefined;
              drawApplied(out, p.plan);
            } catch (err) {
              replace(status, notice('error', `Nothing more was changed: ${(err as Error).message}`));
              cancel.disabled = false;
            }
          },
        },
        h('h2', { id: 'confirm-title' }, 'Remove snapshots?'),
        h(
          'p',
          null,
          `This removes ${plural(removed, 'snapshot')} of ${plural(p.plan.groups.filter((g) => g.remove.length).length, 'disk')}, as previewed. It cannot be undone.`,
        ),
        h(
          'label',
          { class: 'check' },
          prune,
          ' Also collect garbage (prune): free the chunks no snapshot needs any more',
          ctx.isGlobal ? null : h('small', { class: 'hint' }, ' (needs a global admin token)'),
        ),
        status,
        h('div', { class: 'actions' }, cancel, go),
      ),
    );
    dialog.showModal();
    cancel.focus();
  };

  const drawApplied = (out: ForgetResponse, before: ForgetPlan) => {
    const expected = new Set(before.groups.flatMap((g) => g.remove.map((s) => s.id)));
    const actual = new Set(out.plan.groups.flatMap((g) => g.remove.map((s) => s.id)));
    const same = expected.size === actual.size && [...expected].every((id) => actual.has(id));
    const spared = out.plan.groups.reduce(
      (n, g) => n + g.keep.filter((k) => k.reasons.includes(NOT_IN_PREVIEW)).length,
      0,
    );
    replace(
      result,
      h('h2', { id: 'plan-title' }, 'Applied'),
      notice(
        'ok',
        `Removed ${plural(out.removed, 'snapshot')}.`,
        out.gc
          ? ` Garbage collection freed ${bytes(out.gc.bytesFreed)} in ${count(out.gc.chunksDeleted)} chunks.`
          : '',
      ),
      same
        ? null
        : notice(
            'warn',
            'Snapshots arrived or left between the preview and applying it, so the plan applied differs from the one previewed. Preview again to see where things stand.',
          ),
      spared === 0
        ? null
        : notice(
            'warn',
            `${plural(spared, 'snapshot')} the policy now selects for removal ${spared === 1 ? 'was' : 'were'} kept: ${spared === 1 ? 'it was' : 'they were'} not in the preview. Preview again to see ${spared === 1 ? 'it' : 'them'}.`,
          ),
    );
    result.querySelector('h2')?.focus();
  };

  replace(main, h('h1', null, 'Retention'), form, result, dialog);
  void get<{ disks: DiskOverview[] }>('/v1/disks')
    .then((r) => {
      disks = r.disks;
      const hosts = [...new Set(disks.map((d) => d.host))].sort();
      hostSel.append(...hosts.map((n) => h('option', { value: n }, n)));
      fillDisks();
    })
    .catch((err) =>
      replace(formStatus, notice('error', `The host list could not be loaded: ${(err as Error).message}`)),
    );
  return () => dialog.close();
};
