import type { Whoami } from './types.js';

/** What every view knows about the person using the console. */
export interface ViewContext {
  me: Whoami;
  /** An admin token: may forget, run jobs and manage tokens. Any other role that can log in only looks. */
  canChange: boolean;
  /** A global admin (tenant *): sees every tenant, may run gc and verify and prune. */
  isGlobal: boolean;
  /** Changes the route (location hash) and renders it. */
  go(route: string): void;
}

/** A view draws into `main`; what it returns is called when the person leaves it (timers, charts). */
export type View = (ctx: ViewContext, main: HTMLElement, args: string[]) => undefined | (() => void);

/** A route for a disk: its tenant, host and disk, each URI-encoded. */
export const diskRoute = (tenant: string, host: string, disk: string) =>
  `#/disk/${encodeURIComponent(tenant)}/${encodeURIComponent(host)}/${encodeURIComponent(disk)}`;
