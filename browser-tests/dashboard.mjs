// End-to-end test of the ops dashboard in Debian's headless Chromium, driven by playwright-core.
//
//   node browser-tests/dashboard.mjs <api-url> <token> <dead-job-id> <markup-job-id> [screenshot.png]
//
// Loads the dashboard with the token in the URL fragment (checking the page's CSP), waits for
// the queue cards, opens the job whose payload and error hold script-bearing markup (XSS_TEXT,
// from the environment) and checks it shows as text everywhere and runs nothing, then finds the
// dead job (one that succeeds when run again) in the failing-jobs table, clicks Retry, and waits
// for the job detail to show it succeeded. Every API request must carry the token in its
// Authorization header and never in its URL. Fails on any page error, console error or CSP
// violation. Run by api/tests/dashboard.rs (scripts/ensure-browser.sh installs Chromium and
// playwright-core).
import { chromium } from 'playwright-core';

const [url, token, deadJob, markupJob, screenshot] = process.argv.slice(2);
if (!url || !token || !deadJob || !markupJob) {
  console.error('usage: node dashboard.mjs <api-url> <token> <dead-job-id> <markup-job-id> [screenshot.png]');
  process.exit(2);
}
const executablePath = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
// What the markup job carries in its payload and its error: it would run script if any of it
// were parsed as HTML.
const xss = process.env.XSS_TEXT;
if (!xss) {
  console.error('XSS_TEXT must hold the markup the test job carries');
  process.exit(2);
}

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
  const requests = [];
  page.on('request', (r) => requests.push(r));

  const document = await page.goto(url + '/#token=' + encodeURIComponent(token));
  const csp = document.headers()['content-security-policy'] || '';
  if (!csp.includes("script-src 'self'") || csp.includes('unsafe-inline')) {
    throw new Error('the page is served without a strict CSP: ' + csp);
  }
  // The token moved to sessionStorage and left the address bar.
  if (page.url().includes('token=')) throw new Error('token left in the URL: ' + page.url());

  for (const queue of ['default', 'transactions', 'integrations']) {
    await page.locator(`.card[data-queue="${queue}"]`).waitFor();
  }
  // Strings from the API are text, never markup: the markup job's payload and error (its
  // failing-table cells, the detail fields, the attempts log) show verbatim.
  const markupRow = page.locator(`#failing tr[data-job-id="${markupJob}"]`);
  const shownAsText = async (where, locator, expected = xss) => {
    const text = await locator.innerText();
    if (!text.includes(expected)) throw new Error(`${where} does not show the markup as text: ${text}`);
  };
  await shownAsText('the failing-jobs error cell', markupRow.locator('td.error'));
  await markupRow.locator('button.link').click();
  await page.locator('#detail-id', { hasText: markupJob }).waitFor();
  await shownAsText('the detail\'s last error', page.locator('#detail [data-field="last error"]'));
  await shownAsText('the attempts log', page.locator('#detail-attempts tbody td.error').first());
  // The payload is shown as JSON, where the quotes in the markup are escaped.
  await shownAsText('the payload', page.locator('#detail-payload'), JSON.stringify(xss).slice(1, -1));
  await noMarkupRan(page, 'after opening the markup job');

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

  await noMarkupRan(page, 'at the end');
  await tokenOnlyInHeaders(requests, token);

  if (screenshot) {
    await page.waitForTimeout(3500); // one more refresh, so the card counts include the retry
    await page.screenshot({ path: screenshot, fullPage: true });
  }
  if (problems.length) throw new Error(problems.join('\n'));
  console.log('dashboard ok: queues shown, dead job retried and succeeded');
} finally {
  await browser.close();
}

// No element the markup would create exists in the dashboard's content, and none of its script
// ran (the CSP would block inline script too: the DOM check is what shows rendering is safe).
async function noMarkupRan(page, when) {
  const created = await page.locator('main script, main img, main svg, main b').count();
  if (created !== 0) throw new Error(`${when}: API strings were parsed as HTML (${created} elements)`);
  if ((await page.evaluate(() => typeof window.__xss)) !== 'undefined') {
    throw new Error(`${when}: injected script ran`);
  }
}

// Every API request authenticates with the header; no request puts the token on the wire in its
// URL (the fragment the page is opened with never leaves the browser).
async function tokenOnlyInHeaders(requests, token) {
  const api = requests.filter((r) => new URL(r.url()).pathname.startsWith('/v1/'));
  if (api.length === 0) throw new Error('saw no API requests');
  for (const r of requests) {
    const sent = new URL(r.url());
    const onTheWire = decodeURIComponent(sent.pathname + sent.search);
    if (onTheWire.includes(token)) throw new Error('token in a request URL: ' + r.url());
  }
  for (const r of api) {
    const authorization = (await r.allHeaders()).authorization;
    if (authorization !== 'Bearer ' + token) {
      throw new Error(`${r.method()} ${r.url()} without the token in Authorization`);
    }
  }
}
