/** A few helpers for building DOM without a framework: every view is plain elements from `h`. */
type Child = Node | string | number | false | null | undefined | Child[];
type Attrs = Record<string, string | number | boolean | EventListener | null | undefined>;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs | null = null,
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, '');
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

export function append(parent: Node, children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(parent, c);
    else
      parent.appendChild(
        typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c,
      );
  }
}

export function replace(parent: Element, ...children: Child[]): void {
  parent.replaceChildren();
  append(parent, children);
}

let ids = 0;
/** A unique id for label/for and aria-describedby pairs. */
export const uid = (prefix: string) => `${prefix}-${++ids}`;

/** A labelled form field: the label names the control for screen readers. */
export function field(label: string, control: HTMLElement, hint?: string): HTMLElement {
  const id = control.id || uid('f');
  control.id = id;
  let hintEl: HTMLElement | null = null;
  if (hint) {
    hintEl = h('small', { class: 'hint', id: `${id}-hint` }, hint);
    control.setAttribute('aria-describedby', hintEl.id);
  }
  return h('div', { class: 'field' }, h('label', { for: id }, label), control, hintEl);
}

/** A message block for an empty list or a failure; errors are announced (role=alert). */
export function notice(kind: 'empty' | 'error' | 'info' | 'ok' | 'warn', ...children: Child[]): HTMLElement {
  return h('div', { class: `notice ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, ...children);
}

/** Placeholder rows that hold a table's place while its data loads, so nothing jumps when it arrives. */
export function skeletonRows(columns: number, rows = 4): HTMLTableSectionElement {
  return h(
    'tbody',
    { 'aria-hidden': 'true', class: 'skeleton' },
    Array.from({ length: rows }, () =>
      h(
        'tr',
        null,
        Array.from({ length: columns }, () => h('td', null, h('span', { class: 'bone' }))),
      ),
    ),
  );
}

/** Copies text, falling back to selecting it where the clipboard API is unavailable (plain http). */
export async function copyText(text: string, source: HTMLElement): Promise<boolean> {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const range = document.createRange();
    range.selectNodeContents(source);
    const sel = window.getSelection();
    sel?.removeAllRanges();
    sel?.addRange(range);
    return false;
  }
}

/** A code block with a Copy button that says what happened. */
export function copyable(text: string, label: string): HTMLElement {
  const code = h('code', null, text);
  const status = h('span', { class: 'copy-status', role: 'status' });
  const button = h(
    'button',
    {
      type: 'button',
      class: 'secondary small',
      'aria-label': `Copy ${label}`,
      onclick: async () => {
        const ok = await copyText(text, code);
        status.textContent = ok ? 'Copied' : 'Selected: press Ctrl+C';
        setTimeout(() => (status.textContent = ''), 3000);
      },
    },
    'Copy',
  );
  return h(
    'div',
    { class: 'copyable' },
    h('pre', null, code),
    h('div', { class: 'copy-row' }, button, status),
  );
}
