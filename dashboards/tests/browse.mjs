// Drives the dashboards in headless Chromium (Debian's, through playwright-core) and reports, as
// one JSON object on stdout, what tests/dashboards.rs asserts: per page its console errors,
// failed requests and serious or critical axe-core violations, a screenshot; the heat map's
// click-through; a silence made from the alerts page; an action lifted from the decisions page; a
// shared URL restoring the view.
//
//   node dashboards/tests/browse.mjs <base-url> <screenshot-dir>
// VIGIL_NODE_MODULES names the node_modules holding playwright-core and axe-core (scripts/test
// installs them), VIGIL_CHROMIUM the browser (default /usr/bin/chromium).
import { createRequire } from 'node:module';
import path from 'node:path';

const require = createRequire(path.join(process.env.VIGIL_NODE_MODULES || 'node_modules', 'x.js'));
const { chromium } = require('playwright-core');
const axeSource = require.resolve('axe-core/axe.min.js');

const [base, shots, recipient, emptyBase] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath: process.env.VIGIL_CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox'] });
const report = { pages: {}, clickThrough: null, silence: null, lift: null, shared: null };

async function open(name, hash, { theme = 'light' } = {}) {
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 }, colorScheme: theme });
  const page = await context.newPage();
  const problems = [];
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('requestfailed', (r) => problems.push(`request failed: ${r.url()} ${r.failure() && r.failure().errorText}`));
  page.on('response', (r) => { if (r.status() >= 400) problems.push(`HTTP ${r.status()}: ${r.url()}`); });
  await page.goto(`${base}/${hash}`);
  await settle(page, name);
  return { page, context, problems };
}

// A page is drawn when main says which page it holds and every chart is drawn.
async function settle(page, name) {
  await page.waitForSelector(`main[data-page="${name}"]`, { timeout: 30000 });
  await page.waitForFunction(() => [...document.querySelectorAll('.chart')].every((c) => c.dataset.drawn === 'true'), null, { timeout: 30000 });
  await page.waitForLoadState('networkidle');
}

async function axe(page) {
  await page.addScriptTag({ path: axeSource });
  const result = await page.evaluate(async () => axe.run(document, { resultTypes: ['violations'] }));
  return result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical')
    .map((v) => `${v.id} (${v.impact}): ${v.help}: ${v.nodes.map((n) => n.target.join(' ')).slice(0, 3).join(', ')}`);
}

const PAGES = [
  ['overview', '#/overview'],
  ['heatmap', '#/heatmap'],
  ['pair', '#/pair?egress_source=ip-3&provider=yahoo&window=1h'],
  ['provider', '#/provider?provider=yahoo&window=1h'],
  ['scopes', '#/scopes?scope=tenant&window=1h'],
  ['scope', '#/scope?scope=egress_source&egress_source=ip-3&window=1h'],
  ['alerts', '#/alerts'],
  ['decisions', '#/decisions'],
  ['bounces', '#/bounces'],
  ['search', '#/search?recipient=SEARCH_RECIPIENT'],
  ['suppressions', '#/suppressions'],
  ['dmarc', '#/dmarc'],
];

// Ranges past the live state's 24 h, answered by the warehouse (Parquet or ClickHouse).
const WAREHOUSE_PAGES = [
  ['overview', '#/overview?window=7d', 'overview-7d'],
  ['pair', '#/pair?egress_source=ip-3&provider=yahoo&window=30d', 'pair-30d'],
];

const visits = [];
for (const theme of ['light', 'dark']) {
  for (const [name, hash] of PAGES) visits.push([name, hash, theme === 'light' ? name : `${name}-dark`, theme]);
}
for (const [name, hash, key] of WAREHOUSE_PAGES) visits.push([name, hash, key, 'light']);

{
  for (const [name, hash, key, theme] of visits) {
    const { page, context, problems } = await open(name, hash.replace('SEARCH_RECIPIENT', encodeURIComponent(recipient || '')), { theme });
    const text = await page.textContent('main');
    report.pages[key] = {
      problems,
      violations: await axe(page),
      failedToLoad: text.includes('Could not load this page'),
      text: text.slice(0, 2000),
    };
    await page.screenshot({ path: path.join(shots, `${key}.png`), fullPage: true });
    await context.close();
  }
}

// The heat map: a click on a cell opens that pair.
{
  const { page, context, problems } = await open('heatmap', '#/heatmap');
  const target = await page.evaluate(() => {
    const node = document.querySelector('.chart');
    const chart = echarts.getInstanceByDom(node);
    const option = chart.getOption();
    const [x, y] = option.series[0].data[0];
    const [px, py] = chart.convertToPixel({ seriesIndex: 0 }, [x, y]);
    const box = node.getBoundingClientRect();
    return { x: box.left + px, y: box.top + py, provider: option.xAxis[0].data[x], source: option.yAxis[0].data[y] };
  });
  await page.mouse.click(target.x, target.y);
  await settle(page, 'pair');
  report.clickThrough = { expected: target, hash: await page.evaluate(() => location.hash), heading: await page.textContent('main h1'), problems };
  await context.close();
}

// A silence made from the alerts page (the test made sure an alert fires).
{
  const { page, context, problems } = await open('alerts', '#/alerts');
  const button = page.getByRole('button', { name: /^Silence / }).first();
  const alertsShown = await button.count();
  if (alertsShown) {
    await button.click();
    await page.waitForFunction(() => [...document.querySelectorAll('button')].some((b) => b.textContent === 'Expire'), null, { timeout: 15000 });
  }
  report.silence = { alertsShown, problems };
  await context.close();
}

// An action lifted from the decisions page (the test made sure one is in force).
{
  const { page, context, problems } = await open('decisions', '#/decisions');
  const button = page.getByRole('button', { name: /^Lift / }).first();
  const liftsShown = await button.count();
  if (liftsShown) {
    await page.fill('#lift-reason', 'checked by hand');
    const answered = page.waitForResponse((r) => r.url().endsWith('/api/v1/actions/lift'));
    await button.click();
    await answered;
    // The page is drawn again with the lift among the latest decisions.
    await page.waitForFunction(() => [...document.querySelectorAll('td')].some((td) => td.textContent === 'lifted'), null, { timeout: 15000 });
  }
  report.lift = { liftsShown, problems };
  await context.close();
}

// A shared URL restores the view: page, colour metric and window.
{
  const { page, context, problems } = await open('heatmap', '#/heatmap?metric=block&window=24h');
  report.shared = { metric: await page.inputValue('#metric'), window: await page.inputValue('#window'), problems };
  await context.close();
}

// A Vigil without events says how to connect a source instead of drawing empty charts.
if (emptyBase) {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${emptyBase}/#/overview`);
  await page.waitForSelector('main[data-page="overview"]', { timeout: 30000 });
  report.empty = { text: await page.textContent('main'), charts: await page.locator('.chart').count() };
  await context.close();
}

await browser.close();
console.log(JSON.stringify(report));
