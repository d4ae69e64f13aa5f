// Times the overview page in headless Chromium, from navigation to its last chart drawn, for
// benches/query_latency.rs. Each load is in a fresh browser context (nothing cached, as a new
// visitor), after one warm-up load not counted; the page's clock is set to the data set's
// "now", so its ranges cover the generated events. Prints one JSON object: per window, the
// loads' p50 and p95 in milliseconds.
//
//   node dashboards/tests/overview-load.mjs <base-url> <now, RFC 3339> <rounds> <window>...
// VIGIL_NODE_MODULES names the node_modules holding playwright-core, VIGIL_CHROMIUM the browser.
import { createRequire } from 'node:module';
import path from 'node:path';
import { performance } from 'node:perf_hooks';

const require = createRequire(path.join(process.env.VIGIL_NODE_MODULES || 'node_modules', 'x.js'));
const { chromium } = require('playwright-core');

const [base, now, roundsText, ...windows] = process.argv.slice(2);
const rounds = Number(roundsText);
const browser = await chromium.launch({ executablePath: process.env.VIGIL_CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox'] });

/// One load's milliseconds; throws when the page does not draw the data.
async function load(window) {
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(e.message));
  page.on('response', (r) => { if (r.status() >= 400) problems.push(`HTTP ${r.status()}: ${r.url()}`); });
  await page.clock.setFixedTime(new Date(now));
  const started = performance.now();
  await page.goto(`${base}/#/overview?window=${window}&refresh=0`);
  await page.waitForSelector('main[data-page="overview"]', { timeout: 120000 });
  await page.waitForFunction(() => {
    const charts = [...document.querySelectorAll('.chart')];
    return charts.length > 0 && charts.every((c) => c.dataset.drawn === 'true');
  }, null, { timeout: 120000, polling: 'raf' });
  const elapsed = performance.now() - started;
  const text = await page.textContent('main');
  await context.close();
  if (problems.length || !text.includes('Worst egress source')) {
    throw new Error(`overview at ${window} did not draw the data: ${problems.join('; ')} ${text.slice(0, 300)}`);
  }
  return elapsed;
}

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

const report = {};
for (const window of windows) {
  await load(window);
  const times = [];
  for (let i = 0; i < rounds; i++) times.push(await load(window));
  times.sort((a, b) => a - b);
  report[window] = { loads: rounds, p50_ms: percentile(times, 50), p95_ms: percentile(times, 95) };
}
await browser.close();
console.log(JSON.stringify(report));
