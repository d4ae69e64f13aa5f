// With API tokens configured, the dashboards ask for one, use it, and keep it in the tab's
// sessionStorage only. Prints one JSON object for tests/dashboards.rs.
//
//   node dashboards/tests/token.mjs <base-url> <token>
import { createRequire } from 'node:module';
import path from 'node:path';

const require = createRequire(path.join(process.env.VIGIL_NODE_MODULES || 'node_modules', 'x.js'));
const { chromium } = require('playwright-core');
const [base, token] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath: process.env.VIGIL_CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox'] });
const context = await browser.newContext();
const page = await context.newPage();
const errors = [];
page.on('pageerror', (e) => errors.push(e.message));
await page.goto(`${base}/#/overview`);
await page.waitForSelector('#token', { timeout: 30000 });
const asked = await page.textContent('main');
await page.fill('#token', token);
await page.click('button[type="submit"]');
await page.waitForSelector('main[data-page="overview"]', { timeout: 30000 });
const shown = await page.textContent('main');
const stored = await page.evaluate(() => ({ session: sessionStorage.getItem('vigil-token'), local: Object.keys(localStorage) }));
// A new tab of the same browser (a new session) asks again.
const second = await context.newPage();
await second.goto(`${base}/#/overview`);
await second.waitForSelector('#token', { timeout: 30000 });
await browser.close();
console.log(JSON.stringify({ asked, shown, stored, askedAgain: true, errors }));
