import { ApiError, call, session, whenUnauthorized } from './api.js';
import type { View, ViewContext } from './context.js';
import { h, notice, replace } from './dom.js';
import type { Whoami } from './types.js';
import { diskView } from './views/disk.js';
import { fleetView } from './views/fleet.js';
import { retentionView } from './views/retention.js';
import { storageView } from './views/storage.js';
import { tokensView } from './views/tokens.js';

const app = document.getElementById('app')!;

const ROUTES: { path: string; label: string; view: View; nav: boolean }[] = [
  { path: 'fleet', label: 'Fleet', view: fleetView, nav: true },
  { path: 'disk', label: 'Disk', view: diskView, nav: false },
  { path: 'retention', label: 'Retention', view: retentionView, nav: true },
  { path: 'storage', label: 'Storage & jobs', view: storageView, nav: true },
  { path: 'tokens', label: 'Tokens', view: tokensView, nav: true },
];

/** Roles that may use the console: an agent token backs up and restores, it does not administer. */
function refusal(me: Whoami): string | undefined {
  if (me.role === 'agent')
    return 'This is an agent token: it backs up and restores its hosts. The console needs an admin token.';
  return undefined;
}

function renderLogin(message?: { kind: 'error' | 'info'; text: string }): void {
  document.title = 'Sign in · diskvault';
  const input = h('input', {
    id: 'token',
    name: 'token',
    type: 'password',
    autocomplete: 'off',
    spellcheck: 'false',
    required: true,
    placeholder: 'dv_…',
    'aria-describedby': 'token-hint',
  });
  const status = h('div', { class: 'login-status' }, message ? notice(message.kind, message.text) : null);
  const submit = h('button', { type: 'submit' }, 'Sign in');
  const form = h(
    'form',
    {
      class: 'login card',
      'aria-labelledby': 'login-title',
      onsubmit: async (e: Event) => {
        e.preventDefault();
        const token = input.value.trim();
        if (!token) return;
        submit.disabled = true;
        replace(status, notice('info', 'Checking the token…'));
        try {
          const me = await call<Whoami>('GET', '/v1/whoami', undefined, token);
          const refused = refusal(me);
          if (refused) {
            replace(status, notice('error', refused));
            input.select();
            return;
          }
          session.save(token);
          start(me);
        } catch (err) {
          const text =
            err instanceof ApiError && err.status === 401
              ? 'The server does not accept this token (unknown, malformed or revoked).'
              : `Sign-in failed: ${(err as Error).message}`;
          replace(status, notice('error', text));
          input.select();
        } finally {
          submit.disabled = false;
        }
      },
    },
    h('h1', { id: 'login-title' }, h('span', { class: 'logo', 'aria-hidden': 'true' }), 'diskvault console'),
    h('label', { for: 'token' }, 'API token'),
    input,
    h(
      'small',
      { id: 'token-hint', class: 'hint' },
      'An admin token (diskvault token create --role admin). It stays in this browser tab only and is forgotten when the tab closes.',
    ),
    submit,
    status,
  );
  replace(app, h('main', { id: 'main', class: 'login-page' }, form));
  input.focus();
}

let leave: (() => void) | undefined;

function start(me: Whoami): void {
  const ctx: ViewContext = {
    me,
    canChange: me.role === 'admin',
    isGlobal: me.role === 'admin' && me.tenant === '*',
    go: (route) => {
      if (location.hash === route) render();
      else location.hash = route;
    },
  };
  const nav = h(
    'nav',
    { 'aria-label': 'Views' },
    h(
      'ul',
      null,
      ROUTES.filter((r) => r.nav).map((r) =>
        h('li', null, h('a', { href: `#/${r.path}`, 'data-route': r.path }, r.label)),
      ),
    ),
  );
  const scope = me.tenant === '*' ? 'all tenants' : `tenant ${me.tenant}`;
  const who = h(
    'div',
    { class: 'who' },
    h('span', { class: 'badge', title: `token ${me.tokenId}` }, `${me.role} · ${scope}`),
    ctx.canChange ? null : h('span', { class: 'badge warn' }, 'read-only'),
    h(
      'button',
      {
        type: 'button',
        class: 'secondary small',
        onclick: () => {
          session.clear();
          leave?.();
          location.hash = '';
          renderLogin({ kind: 'info', text: 'Signed out.' });
        },
      },
      'Sign out',
    ),
  );
  const main = h('main', { id: 'main', tabindex: '-1' });
  replace(
    app,
    h(
      'header',
      { class: 'top' },
      h(
        'a',
        { class: 'brand', href: '#/fleet' },
        h('span', { class: 'logo', 'aria-hidden': 'true' }),
        'diskvault',
      ),
      nav,
      who,
    ),
    main,
  );

  let first = true;
  const render = () => {
    leave?.();
    leave = undefined;
    const [path, ...args] = location.hash.replace(/^#\/?/, '').split('/');
    const route = ROUTES.find((r) => r.path === path) ?? ROUTES[0];
    for (const a of nav.querySelectorAll('a')) {
      const current =
        a.dataset.route === route.path || (route.path === 'disk' && a.dataset.route === 'fleet');
      if (current) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    document.title = `${route.label} · diskvault`;
    main.replaceChildren();
    leave = route.view(ctx, main, args.map(decodeURIComponent)) ?? undefined;
    // Focus moves to the new view (not on first load), so a screen reader announces it.
    if (!first) main.focus();
    first = false;
  };
  window.onhashchange = render;
  render();
}

whenUnauthorized(() => {
  session.clear();
  leave?.();
  window.onhashchange = null;
  renderLogin({ kind: 'error', text: 'The server no longer accepts this token. Sign in again.' });
});

async function boot(): Promise<void> {
  const token = session.token;
  if (!token) return renderLogin();
  replace(app, h('main', { id: 'main', class: 'login-page' }, h('p', { class: 'muted' }, 'Loading…')));
  try {
    const me = await call<Whoami>('GET', '/v1/whoami');
    if (refusal(me)) {
      session.clear();
      return renderLogin();
    }
    start(me);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return; // whenUnauthorized has shown the login
    replace(
      app,
      h(
        'main',
        { id: 'main', class: 'login-page' },
        notice('error', `The server cannot be reached: ${(err as Error).message}`),
      ),
    );
  }
}

void boot();
