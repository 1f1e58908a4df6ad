import { accessSync, constants } from 'node:fs';
import type { Browser, Page } from 'puppeteer-core';
import puppeteer from 'puppeteer-core';

/**
 * A real headless Chromium for the web console's tests: Debian's `chromium` package (.ci/run installs it),
 * or the binary named by CHROMIUM_PATH.
 */
export function chromiumPath(): string | undefined {
  for (const p of [process.env.CHROMIUM_PATH, '/usr/bin/chromium', '/usr/bin/chromium-browser']) {
    if (!p) continue;
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {}
  }
  return undefined;
}

export async function launchChromium(executablePath: string): Promise<Browser> {
  return puppeteer.launch({
    executablePath,
    headless: true,
    // Root (CI containers) cannot use Chromium's user-namespace sandbox.
    args: [
      ...(process.getuid?.() === 0 ? ['--no-sandbox'] : []),
      '--disable-dev-shm-usage',
      '--disable-gpu',
      '--no-first-run',
      '--lang=en-GB',
    ],
  });
}

/**
 * Everything a page reports as wrong: uncaught errors, console errors (a CSP violation is one), failed
 * requests. `expected` lists substrings of console errors a test provokes on purpose (a refused 401).
 */
export function watchPage(page: Page): { problems: string[]; expect(text: string): void } {
  const problems: string[] = [];
  const expected: string[] = [];
  page.on('pageerror', (err) => problems.push(`page error: ${(err as Error).message ?? err}`));
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    const where = msg.location()?.url ?? '';
    const text = `${msg.text()} ${where}`;
    if (!expected.some((e) => text.includes(e))) problems.push(`console error: ${text}`);
  });
  page.on('requestfailed', (req) => {
    const failure = req.failure()?.errorText ?? '';
    // A request the page itself abandoned on navigation is not a failure of the console.
    if (failure !== 'net::ERR_ABORTED') problems.push(`request failed: ${req.url()} ${failure}`);
  });
  return { problems, expect: (text) => expected.push(text) };
}

/** Types the token into the sign-in form and waits for the console or for the form's verdict. */
export async function signIn(page: Page, base: string, token: string): Promise<void> {
  await page.goto(`${base}/ui/`, { waitUntil: 'domcontentloaded' });
  await page.waitForSelector('#token');
  await page.focus('#token');
  // One input event for the whole token (as a paste): typing 100 keys one by one is slow on a loaded machine.
  await page.keyboard.sendCharacter(token);
  await page.click('form.login button[type=submit]');
  await page.waitForSelector('header.top, .login-status .notice.error');
}
