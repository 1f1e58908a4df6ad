import { randomBytes } from 'node:crypto';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import type { Browser, BrowserContext, Page } from 'puppeteer-core';
import { call } from '../helpers/api-client.js';
import { runCli } from '../helpers/backup-e2e.js';
import { chromiumPath, launchChromium, signIn, watchPage } from '../helpers/browser.js';
import { type ConsoleFleet, seedConsoleFleet } from '../helpers/console-fleet.js';
import { startTestServer, type TestServer } from '../helpers/server.js';

// The web console in a real headless Chromium against a real server holding a small fleet: sign-in and
// refusal, what each kind of admin sees, and retention that previews and applies exactly what
// `diskvault forget --dry-run` plans. One browser for the file; each test in its own browser context (its
// own sessionStorage), failing on any page error, console error or failed request.

const chromium = chromiumPath();
let browser: Browser;
let srv: TestServer;
let fleet: ConsoleFleet;

if (!chromium) {
  // CI installs chromium (.ci/run): there a missing browser is a failure, not a reason to skip.
  test('web console browser tests: chromium is not installed', (t) => {
    t.log('SKIPPED: no chromium at /usr/bin/chromium or $CHROMIUM_PATH (apt-get install chromium)');
    if (process.env.CI) t.fail('CI must install chromium');
    else t.pass();
  });
}
const browserTest = chromium ? test.serial : test.serial.skip;

test.before(async () => {
  if (!chromium) return;
  browser = await launchChromium(chromium);
  srv = await startTestServer({ storage: 'local' });
  fleet = await seedConsoleFleet(srv);
});
test.after.always(async () => {
  await browser?.close();
  await srv?.stop();
});

async function withPage(
  fn: (page: Page, watch: ReturnType<typeof watchPage>) => Promise<void>,
): Promise<string[]> {
  const context: BrowserContext = await browser.createBrowserContext();
  try {
    const page = await context.newPage();
    await page.setViewport({ width: 1366, height: 800 });
    const watch = watchPage(page);
    await fn(page, watch);
    return watch.problems;
  } finally {
    await context.close();
  }
}

const texts = (page: Page, selector: string, attr: string) =>
  page.$$eval(selector, (els, a) => els.map((el) => el.getAttribute(a) ?? ''), attr);

/** Waits until no table is loading any more (skeleton rows replaced by data). */
const settled = (page: Page) =>
  page.waitForFunction(() => !document.querySelector('[aria-busy="true"], tbody.skeleton'));

browserTest(
  'an admin signs in with a token, and the fleet lists every disk that has snapshots',
  async (t) => {
    const problems = await withPage(async (page) => {
      await signIn(page, srv.url, srv.adminToken);
      await settled(page);
      const shown = (await texts(page, 'table.fleet tbody tr', 'data-disk')).sort();
      t.deepEqual(shown, [...fleet.disks.default, ...fleet.disks.acme].sort());
      // The same set the API reports: every disk with a snapshot.
      const stats = await call(srv.url, srv.adminToken, 'GET', '/v1/stats');
      t.deepEqual(
        shown,
        stats.json.disks.map((d: { host: string; disk: string }) => `${d.host}/${d.disk}`).sort(),
      );
      // db1 stopped three nights ago and had unreadable sectors: flagged; the others are not.
      t.deepEqual(await texts(page, 'table.fleet tbody tr.problem', 'data-disk'), ['db1/nvme0n1']);
      // The token lives in this tab's sessionStorage, never in the address.
      t.is(await page.evaluate(() => sessionStorage.getItem('diskvault.token')), srv.adminToken);
      t.false(page.url().includes(srv.adminToken.slice(3)));
      // Sorting works from the keyboard: focus the Snapshots header, press Enter (ties keep the name order).
      const sortButtons = await page.$$('table.fleet thead button.sort');
      await sortButtons[sortButtons.length - 1].focus();
      await page.keyboard.press('Enter');
      t.deepEqual(await texts(page, 'table.fleet tbody tr', 'data-disk'), [
        'web1/sdb',
        'shop/vda',
        'db1/nvme0n1',
        'web1/sda',
      ]);
      // Sign out forgets the token.
      await page.click('header .who button');
      await page.waitForSelector('#token');
      t.is(await page.evaluate(() => sessionStorage.getItem('diskvault.token')), null);
    });
    t.deepEqual(problems, []);
  },
);

browserTest('the disk view shows every snapshot, its SHA-256 and the command that restores it', async (t) => {
  const snaps = (await call(srv.url, srv.adminToken, 'GET', '/v1/snapshots?host=db1&disk=nvme0n1')).json
    .snapshots;
  const newest = snaps[snaps.length - 1];
  const problems = await withPage(async (page) => {
    await signIn(page, srv.url, srv.adminToken);
    await page.goto(`${srv.url}/ui/#/disk/default/db1/nvme0n1`);
    await page.waitForSelector('.chart canvas');
    await settled(page);
    t.deepEqual(
      await texts(page, 'table.snapshots tbody tr', 'data-id'),
      snaps.map((s: { id: string }) => s.id).reverse(),
    );
    const details = await page.$eval('section.details', (el) => el.textContent ?? '');
    t.true(details.includes(newest.sha256));
    t.true(details.includes('2 ranges, 12.0 KiB stored as zeros'));
    const commands = await page.$$eval('section.details pre code', (els) => els.map((el) => el.textContent));
    t.is(commands[0], `diskvault restore ${newest.id} db1-nvme0n1.img --server ${srv.url}`);
  });
  t.deepEqual(problems, []);
});

browserTest('a tenant admin sees only its own tenant', async (t) => {
  const problems = await withPage(async (page, watch) => {
    await signIn(page, srv.url, fleet.acmeAdmin);
    await settled(page);
    t.deepEqual(await texts(page, 'table.fleet tbody tr', 'data-disk'), fleet.disks.acme);
    t.regex(await page.$eval('header .who', (el) => el.textContent ?? ''), /admin · tenant acme/);
    // Another tenant's disk, asked for by address, is not found.
    watch.expect('404');
    await page.goto(`${srv.url}/ui/#/disk/default/web1/sda`);
    await page.waitForSelector('main .notice.error');
    t.is(await page.$$eval('table.snapshots tbody tr[data-id]', (rows) => rows.length), 0);
    // The retention scope offers its hosts only, and the token list its tokens only.
    await page.goto(`${srv.url}/ui/#/retention`);
    await page.waitForSelector('select option[value="shop"]');
    t.deepEqual(await page.$$eval('select[name=host] option', (o) => o.map((x) => x.getAttribute('value'))), [
      '',
      'shop',
    ]);
    await page.goto(`${srv.url}/ui/#/tokens`);
    await settled(page);
    const tenants = await page.$$eval('table.tokens tbody tr td:nth-child(3)', (tds) =>
      tds.map((td) => td.textContent),
    );
    t.deepEqual(tenants, ['acme', 'acme']);
  });
  t.deepEqual(problems, []);
});

browserTest('an agent token is refused at sign-in, and so is a revoked one', async (t) => {
  const problems = await withPage(async (page, watch) => {
    await signIn(page, srv.url, fleet.agent);
    t.regex(await page.$eval('.login-status', (el) => el.textContent ?? ''), /agent token/);
    t.is(await page.$('header.top'), null);
    t.is(await page.evaluate(() => sessionStorage.getItem('diskvault.token')), null);
    // The browser logs the server's 401 as a failed resource: provoked here on purpose.
    watch.expect('status of 401');
    const revoked = await srv.makeToken('admin');
    t.is((await call(srv.url, srv.adminToken, 'DELETE', `/v1/tokens/${revoked.split('_')[1]}`)).status, 204);
    await signIn(page, srv.url, revoked);
    t.regex(await page.$eval('.login-status', (el) => el.textContent ?? ''), /does not accept this token/);
    t.is(await page.$('header.top'), null);
    t.is(await page.evaluate(() => sessionStorage.getItem('diskvault.token')), null);
  });
  t.deepEqual(problems, []);
});

browserTest(
  'verify runs from the console, and a token is created (shown once) and revoked there',
  async (t) => {
    const problems = await withPage(async (page) => {
      page.on('dialog', (d) => void d.accept());
      await signIn(page, srv.url, srv.adminToken);
      await page.goto(`${srv.url}/ui/#/storage`);
      await page.waitForSelector('table.tenants');
      await page.click('.jobs button:not(.secondary)');
      await page.waitForSelector('.last-verify .notice.ok', { timeout: 20_000 });
      t.regex(
        await page.$eval('.last-verify .notice.ok', (el) => el.textContent ?? ''),
        /^OK: 25 snapshots and \d+ chunks checked/,
      );

      await page.goto(`${srv.url}/ui/#/tokens`);
      await settled(page);
      await page.type('input[name=hosts]', 'web9');
      await page.click('form button[type=submit]');
      await page.waitForSelector('.secret pre code');
      const secret = await page.$eval('.secret pre code', (el) => el.textContent ?? '');
      t.like((await call(srv.url, secret, 'GET', '/v1/whoami')).json, { role: 'agent', hosts: ['web9'] });
      const id = secret.split('_')[1];
      // The list is fetched again after the secret is shown: its new row may come a moment later.
      await page.waitForSelector(`tr[data-token="${id}"] button`);
      await page.click(`tr[data-token="${id}"] button`);
      await page.waitForFunction((tid) => !document.querySelector(`tr[data-token="${tid}"]`), {}, id);
      t.is((await call(srv.url, secret, 'GET', '/v1/whoami')).status, 401);
    });
    t.deepEqual(problems, []);
  },
);

browserTest(
  'the retention preview is the plan of forget --dry-run, and applying it removes exactly those snapshots',
  async (t) => {
    type Plan = Record<string, { keep: string[]; remove: string[] }>;
    const before = (await call(srv.url, srv.adminToken, 'GET', '/v1/snapshots')).json.snapshots.map(
      (s: { id: string }) => s.id,
    );
    const cli = await runCli(
      ['forget', '--host', 'web1', '--keep-daily', '3', '--keep-weekly', '1', '--dry-run', '--json'],
      {
        DISKVAULT_SERVER: srv.url,
        DISKVAULT_TOKEN: srv.adminToken,
      },
    );
    t.is(cli.code, 0, cli.stderr);
    const cliPlan: Plan = {};
    for (const g of JSON.parse(cli.stdout).plan.groups) {
      cliPlan[`${g.host}/${g.disk}`] = {
        keep: g.keep
          .map(
            (k: { snapshot: { id: string }; reasons: string[] }) =>
              `${k.snapshot.id} ${k.reasons.join(', ')}`,
          )
          .sort(),
        remove: g.remove.map((s: { id: string }) => s.id).sort(),
      };
    }
    const problems = await withPage(async (page) => {
      await signIn(page, srv.url, srv.adminToken);
      await page.goto(`${srv.url}/ui/#/retention`);
      await page.waitForSelector('select option[value="web1"]');
      await page.select('select[name=host]', 'web1');
      await page.type('input[name=daily]', '3');
      await page.type('input[name=weekly]', '1');
      await page.click('form.policy button[type=submit]');
      await page.waitForSelector('table.plan-group');
      const uiPlan: Plan = await page.$$eval('table.plan-group', (tables) => {
        const out: Record<string, { keep: string[]; remove: string[] }> = {};
        for (const table of tables) {
          const rows = [...table.querySelectorAll('tbody tr')] as HTMLTableRowElement[];
          out[table.dataset.group ?? ''] = {
            keep: rows
              .filter((r) => r.dataset.decision === 'keep')
              .map((r) => `${r.dataset.id} ${r.cells[3].textContent}`)
              .sort(),
            remove: rows
              .filter((r) => r.dataset.decision === 'remove')
              .map((r) => r.dataset.id ?? '')
              .sort(),
          };
        }
        return out;
      });
      t.deepEqual(uiPlan, cliPlan);
      const planned = Object.values(cliPlan).flatMap((g) => g.remove);
      // 14 nights of web1/sda keep the newest 3 (the newest is also the weekly): 11 go; web1/sdb keeps its 3.
      t.is(planned.length, 11);
      // A backup arrives between the preview and applying it: the plan made anew would remove one more
      // night (the oldest of the three daily ones), which the preview kept.
      const image = join(await mkdtemp(join(tmpdir(), 'dv-console-')), 'disk.img');
      await writeFile(image, randomBytes(64 * 1024));
      const late = await runCli(['backup', image, '--host', 'web1', '--disk', 'sda', '--json'], {
        DISKVAULT_SERVER: srv.url,
        DISKVAULT_TOKEN: srv.adminToken,
      });
      t.is(late.code, 0, late.stderr);
      const fresh = await call(srv.url, srv.adminToken, 'POST', '/v1/forget', {
        json: { policy: { daily: 3, weekly: 1 }, host: 'web1', dryRun: true },
      });
      t.is(fresh.json.plan.groups.flatMap((g: { remove: unknown[] }) => g.remove).length, 12);

      await page.click('.plan button.danger');
      await page.waitForSelector('dialog[open] button.danger');
      await page.click('dialog[open] button.danger');
      await page.waitForSelector('.plan .notice.ok');
      t.regex(await page.$eval('.plan .notice.ok', (el) => el.textContent ?? ''), /^Removed 11 snapshots\./);
      t.regex(
        await page.$eval('.plan .notice.warn', (el) => el.textContent ?? ''),
        /^1 snapshot the policy now selects for removal was kept: it was not in the preview\./,
      );
      const after = (await call(srv.url, srv.adminToken, 'GET', '/v1/snapshots')).json.snapshots.map(
        (s: { id: string }) => s.id,
      );
      const lateId: string = (late.summary as unknown as { snapshot: string }).snapshot;
      t.deepEqual(after.sort(), [...before.filter((id: string) => !planned.includes(id)), lateId].sort());
    });
    t.deepEqual(problems, []);
  },
);
