// End-to-end test of the ops dashboard in Debian's headless Chromium, driven by playwright-core.
//
//   node browser-tests/dashboard.mjs <api-url> <token> <dead-job-id> <markup-job-id> [screenshot.png]
//
// Loads the dashboard with the token in the URL fragment, waits for the queue cards, opens the
// job whose payload holds markup and checks it shows as text, then finds the dead job (one that
// succeeds when run again) in the failing-jobs table, clicks Retry, and waits for the job
// detail to show it succeeded. Fails on any page error, console error or CSP violation. Run by
// api/tests/dashboard.rs (scripts/ensure-browser.sh installs Chromium and playwright-core).
import { chromium } from 'playwright-core';

const [url, token, deadJob, markupJob, screenshot] = process.argv.slice(2);
if (!url || !token || !deadJob || !markupJob) {
  console.error('usage: node dashboard.mjs <api-url> <token> <dead-job-id> <markup-job-id> [screenshot.png]');
  process.exit(2);
}
const executablePath = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});
const problems = [];
try {
  const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
  page.on('pageerror', (e) => problems.push('page error: ' + e.message));
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push('console error: ' + m.text());
  });
  page.setDefaultTimeout(15000);

  await page.goto(url + '/#token=' + encodeURIComponent(token));
  // The token moved to sessionStorage and left the address bar.
  if (page.url().includes('token=')) throw new Error('token left in the URL: ' + page.url());

  for (const queue of ['default', 'transactions', 'integrations']) {
    await page.locator(`.card[data-queue="${queue}"]`).waitFor();
  }
  // Strings from the API are text, never markup: the payload and the error show verbatim.
  const markupRow = page.locator(`#failing tr[data-job-id="${markupJob}"]`);
  await markupRow.locator('button.link').click();
  await page.locator('#detail-id', { hasText: markupJob }).waitFor();
  const payload = await page.locator('#detail-payload').innerText();
  if (!payload.includes('<b>not markup</b>')) throw new Error('payload not shown verbatim: ' + payload);
  if ((await page.locator('#detail b, #failing b, #detail img, #failing img').count()) !== 0) {
    throw new Error('API strings were parsed as HTML');
  }

  const row = page.locator(`#failing tr[data-job-id="${deadJob}"]`);
  await row.waitFor();
  const rowText = await row.innerText();
  if (!rowText.includes('dead')) throw new Error('the failing row does not say dead: ' + rowText);
  const deadCount = await page.locator('.card[data-queue="default"] [data-field="dead"]').innerText();
  if (deadCount.trim() !== '1') throw new Error('the default card shows dead = ' + deadCount);

  await row.locator('button[data-action="retry"]').click();
  // The retried job opens in the detail panel, which refreshes until it succeeded.
  await page.locator('#detail-id', { hasText: deadJob }).waitFor();
  await page.locator('#detail [data-field="state"]', { hasText: 'succeeded' }).waitFor();
  await row.waitFor({ state: 'detached' });
  const attempts = await page.locator('#detail-attempts tbody tr').count();
  if (attempts < 2) throw new Error('expected two attempts in the log, saw ' + attempts);

  if (screenshot) {
    await page.waitForTimeout(3500); // one more refresh, so the card counts include the retry
    await page.screenshot({ path: screenshot, fullPage: true });
  }
  if (problems.length) throw new Error(problems.join('\n'));
  console.log('dashboard ok: queues shown, dead job retried and succeeded');
} finally {
  await browser.close();
}
