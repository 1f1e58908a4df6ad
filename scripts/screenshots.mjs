// Screenshots of the web console for docs/images: a real server with a small fleet backed up over the real
// protocol, driven by headless Chromium. Run after `npm run build`: node scripts/screenshots.mjs [outdir]
import { mkdir } from 'node:fs/promises';
import { chromiumPath, launchChromium, signIn, watchPage } from '../dist/test/helpers/browser.js';
import { seedConsoleFleet } from '../dist/test/helpers/console-fleet.js';
import { startTestServer } from '../dist/test/helpers/server.js';

const out = process.argv[2] ?? new URL('../docs/images', import.meta.url).pathname;
const chromium = chromiumPath();
if (!chromium) {
  console.error('no chromium found (install Debian package chromium, or set CHROMIUM_PATH)');
  process.exit(1);
}
await mkdir(out, { recursive: true });
const srv = await startTestServer({ storage: 'local', gcGraceMs: 0 });
const browser = await launchChromium(chromium);
try {
  await seedConsoleFleet(srv);
  const shot = async (page, name) => {
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: `${out}/console-${name}.png`, fullPage: true });
    console.log(`${out}/console-${name}.png`);
  };
  const open = async ({ width, height, dark }) => {
    const page = await browser.newPage();
    const watch = watchPage(page);
    await page.setViewport({ width, height, deviceScaleFactor: 1 });
    await page.emulateMediaFeatures([{ name: 'prefers-color-scheme', value: dark ? 'dark' : 'light' }]);
    return { page, watch };
  };
  const settle = (page) =>
    page.waitForFunction(() => !document.querySelector('[aria-busy="true"], .skeleton'));

  const { page, watch } = await open({ width: 1366, height: 800 });
  await page.goto(`${srv.url}/ui/`);
  await page.waitForSelector('#token');
  await shot(page, 'login');
  await signIn(page, srv.url, srv.adminToken);
  await settle(page);
  await shot(page, 'fleet');

  await page.goto(`${srv.url}/ui/#/disk/default/web1/sda`);
  await page.waitForSelector('.chart canvas');
  await settle(page);
  await shot(page, 'disk');

  await page.goto(`${srv.url}/ui/#/retention`);
  await page.waitForSelector('select option[value="web1"]');
  await page.select('select', 'web1');
  await page.type('input[name=daily]', '7');
  await page.type('input[name=weekly]', '4');
  await page.click('form.policy button[type=submit]');
  await page.waitForSelector('table.plan-group');
  await shot(page, 'retention');

  await page.goto(`${srv.url}/ui/#/storage`);
  await page.waitForSelector('table.tenants');
  await page.click('.jobs button:not(.secondary)');
  await page.waitForSelector('.last-verify .notice.ok');
  await shot(page, 'storage');

  await page.goto(`${srv.url}/ui/#/tokens`);
  await page.waitForSelector('tr[data-token]');
  await page.type('input[name=hosts]', 'web2');
  await page.click('form button[type=submit]');
  await page.waitForSelector('.secret');
  await shot(page, 'tokens');

  const phone = await open({ width: 390, height: 844 });
  await signIn(phone.page, srv.url, srv.adminToken);
  await settle(phone.page);
  await shot(phone.page, 'fleet-phone');

  const dark = await open({ width: 1366, height: 800, dark: true });
  await signIn(dark.page, srv.url, srv.adminToken);
  await dark.page.goto(`${srv.url}/ui/#/disk/default/db1/nvme0n1`);
  await dark.page.waitForSelector('.chart canvas');
  await settle(dark.page);
  await shot(dark.page, 'disk-dark');

  const problems = [...watch.problems, ...phone.watch.problems, ...dark.watch.problems];
  if (problems.length) {
    console.error(problems.join('\n'));
    process.exitCode = 1;
  }
} finally {
  await browser.close();
  await srv.stop();
}
