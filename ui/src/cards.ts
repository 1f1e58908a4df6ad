import { h } from './dom.js';

/** A figure with its label and a line under it; tone colours the figure. */
export function card(label: string, value: string, sub: string, tone?: 'good' | 'bad'): HTMLElement {
  return h(
    'div',
    { class: `card stat${tone ? ` ${tone}` : ''}` },
    h('div', { class: 'label' }, label),
    h('div', { class: 'value' }, value),
    h('div', { class: 'sub' }, sub),
  );
}

/** Cards of the same size as `card`, holding their place until the figures arrive. */
export function cardSkeletons(n: number): HTMLElement[] {
  return Array.from({ length: n }, () =>
    h(
      'div',
      { class: 'card stat', 'aria-hidden': 'true' },
      h('div', { class: 'label' }, h('span', { class: 'bone' })),
      h('div', { class: 'value' }, h('span', { class: 'bone wide' })),
      h('div', { class: 'sub' }, h('span', { class: 'bone' })),
    ),
  );
}
