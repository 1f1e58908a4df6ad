import { ApiError, del, get, post } from '../api.js';
import type { View } from '../context.js';
import { copyable, field, h, notice, replace, skeletonRows } from '../dom.js';
import { localTime, utcTitle } from '../format.js';
import type { TokenInfo } from '../types.js';

/** API tokens: the list (never a secret), a new one (its secret shown once), revocation. */
export const tokensView: View = (ctx, main) => {
  const tbody = skeletonRows(6, 3);
  const table = h(
    'table',
    { class: 'data tokens', 'aria-busy': 'true' },
    h('caption', { class: 'sr-only' }, 'API tokens'),
    h(
      'thead',
      null,
      h(
        'tr',
        null,
        ['Id', 'Role', 'Tenant', 'Hosts', 'Created', ''].map((t) =>
          h('th', { scope: 'col' }, t || h('span', { class: 'sr-only' }, 'Actions')),
        ),
      ),
    ),
    tbody,
  );
  const listStatus = h('div');
  const created = h('div', { 'aria-live': 'polite' });

  const load = async () => {
    try {
      const { tokens } = await get<{ tokens: TokenInfo[] }>('/v1/tokens');
      draw(tokens);
    } catch (err) {
      tbody.replaceChildren();
      table.removeAttribute('aria-busy');
      replace(
        listStatus,
        err instanceof ApiError && err.status === 403
          ? notice('info', 'Listing tokens needs an admin token.')
          : notice('error', `Tokens could not be loaded: ${(err as Error).message}`),
      );
    }
  };

  const draw = (tokens: TokenInfo[]) => {
    tokens.sort((a, b) => a.created.localeCompare(b.created));
    tbody.classList.remove('skeleton');
    tbody.removeAttribute('aria-hidden');
    table.removeAttribute('aria-busy');
    tbody.replaceChildren(
      ...tokens.map((t) => {
        const mine = t.id === ctx.me.tokenId;
        return h(
          'tr',
          { 'data-token': t.id },
          h('td', { class: 'mono' }, t.id, mine ? h('span', { class: 'badge' }, 'this session') : null),
          h('td', null, t.role),
          h('td', null, t.tenant === '*' ? 'all (global)' : t.tenant),
          h('td', null, t.hosts.length ? t.hosts.join(', ') : h('span', { class: 'muted' }, '–')),
          h('td', { title: utcTitle(t.created) }, localTime(t.created)),
          h(
            'td',
            { class: 'num' },
            ctx.canChange && !mine
              ? h(
                  'button',
                  {
                    type: 'button',
                    class: 'danger small',
                    'aria-label': `Revoke token ${t.id}`,
                    onclick: () => revoke(t),
                  },
                  'Revoke',
                )
              : null,
          ),
        );
      }),
    );
    replace(listStatus, tokens.length ? null : notice('empty', 'No tokens.'));
  };

  const revoke = async (t: TokenInfo) => {
    if (
      !window.confirm(
        `Revoke token ${t.id} (${t.role}${t.hosts.length ? `, ${t.hosts.join(', ')}` : ''})? Whatever uses it stops working at once.`,
      )
    )
      return;
    try {
      await del(`/v1/tokens/${t.id}`);
      replace(listStatus, notice('ok', `Token ${t.id} revoked.`));
      await load();
    } catch (err) {
      replace(listStatus, notice('error', `Revoking failed: ${(err as Error).message}`));
    }
  };

  const role = h(
    'select',
    { name: 'role' },
    h('option', { value: 'agent' }, 'agent: backs up and restores its hosts'),
    h('option', { value: 'admin' }, 'admin: manages'),
  );
  const hosts = h('input', { type: 'text', name: 'hosts', placeholder: 'web1, web2', autocomplete: 'off' });
  const tenant = h('input', {
    type: 'text',
    name: 'tenant',
    placeholder: ctx.isGlobal ? 'default' : ctx.me.tenant,
    autocomplete: 'off',
    disabled: !ctx.isGlobal,
  });
  const formStatus = h('div');
  const syncRole = () => {
    hosts.disabled = role.value !== 'agent';
    hosts.required = role.value === 'agent';
  };
  role.addEventListener('change', syncRole);
  syncRole();
  const form = h(
    'form',
    {
      class: 'card',
      'aria-labelledby': 'create-title',
      onsubmit: async (e: Event) => {
        e.preventDefault();
        const list = hosts.value.split(/[\s,]+/).filter(Boolean);
        if (role.value === 'agent' && list.length === 0) {
          replace(formStatus, notice('error', 'An agent token needs at least one host.'));
          hosts.focus();
          return;
        }
        try {
          const out = await post<{ token: TokenInfo; secret: string }>('/v1/tokens', {
            role: role.value,
            ...(role.value === 'agent' ? { hosts: list } : {}),
            ...(ctx.isGlobal && tenant.value.trim() ? { tenant: tenant.value.trim() } : {}),
          });
          replace(formStatus);
          hosts.value = '';
          replace(
            created,
            h(
              'section',
              { class: 'card secret', 'aria-labelledby': 'secret-title' },
              h('h2', { id: 'secret-title', tabindex: '-1' }, `New ${out.token.role} token ${out.token.id}`),
              notice(
                'warn',
                'This is the only time the token is shown: store it now (for an agent: DISKVAULT_TOKEN or its config file).',
              ),
              copyable(out.secret, 'the new token'),
              h(
                'button',
                { type: 'button', class: 'secondary', onclick: () => replace(created) },
                'I have stored it',
              ),
            ),
          );
          created.querySelector<HTMLElement>('h2')?.focus();
          await load();
        } catch (err) {
          replace(formStatus, notice('error', `The token was not created: ${(err as Error).message}`));
        }
      },
    },
    h('h2', { id: 'create-title' }, 'New token'),
    h(
      'div',
      { class: 'grid-3' },
      field('Role', role),
      field('Hosts', hosts, 'Agent tokens: the hosts it may back up'),
      field(
        'Tenant',
        tenant,
        ctx.isGlobal ? 'Empty: default for an agent, every tenant for an admin' : 'Your tenant',
      ),
    ),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Create token')),
    formStatus,
  );

  replace(
    main,
    h('h1', null, 'Tokens'),
    created,
    h('div', { class: 'table-wrap' }, table),
    listStatus,
    ctx.canChange ? form : notice('info', 'Read-only: creating and revoking tokens needs an admin token.'),
  );
  void load();
  return undefined;
};
