// Vigil's dashboards: a page per question, each drawn from the query API (/api/v1). No build
// step: this file, style.css, index.html and the vendored ECharts are embedded in the binary.
//
// The URL's hash holds the whole view (`#/pair?egress_source=ip-3&provider=yahoo&window=1h`),
// so a copied URL restores it. With API tokens configured, a 401 asks for a token, kept in
// sessionStorage only (gone when the tab closes).

const view = document.getElementById('view');
const status = document.getElementById('status');
const windowSelect = document.getElementById('window');
const refreshBox = document.getElementById('refresh');
const themeButton = document.getElementById('theme');
const charts = [];
let timer = null;

// ---- the URL is the state ----------------------------------------------------------------

function route() {
  const [path, query] = (location.hash.replace(/^#\/?/, '') || 'overview').split('?');
  return { page: path || 'overview', params: new URLSearchParams(query || '') };
}

function go(page, params) {
  const query = new URLSearchParams(params);
  if (!query.get('window')) query.set('window', windowSelect.value);
  location.hash = `#/${page}?${query}`;
}

function link(page, params, text) {
  const query = new URLSearchParams(params);
  query.set('window', windowSelect.value);
  return el('a', { href: `#/${page}?${query}` }, text);
}

// ---- small DOM helpers ---------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? '' : v);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function panel(title, ...children) {
  const id = `h-${title.toLowerCase().replace(/[^a-z0-9]+/g, '-')}`;
  return el('section', { class: 'panel', 'aria-labelledby': id }, el('h2', { id }, title), ...children);
}

/// A panel across the whole grid, for tables.
function widePanel(title, ...children) {
  const node = panel(title, ...children);
  node.classList.add('wide');
  return node;
}

/// A time as the reader's clock says it, short.
const when = (iso) => (iso ? new Date(iso).toLocaleString([], { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' }) : '');

/// At most `n` characters, the whole text in a tooltip.
const clip = (text, n = 90) => (text && text.length > n ? el('span', { title: text }, `${text.slice(0, n)}…`) : text || '');

function table(headers, rows, numeric = []) {
  return el('table', {},
    el('thead', {}, el('tr', {}, headers.map((h, i) => el('th', { scope: 'col', class: numeric.includes(i) ? 'num' : null }, h)))),
    el('tbody', {}, rows.map((r) => el('tr', {}, r.map((c, i) => el('td', { class: numeric.includes(i) ? 'num' : null }, c))))));
}

const pct = (x) => (x === null || x === undefined ? '–' : `${(x * 100).toFixed(2)} %`);
const rate = (r) => (r ? `${pct(r.value)} (${pct(r.lower)}–${pct(r.upper)})` : '–');
const scoreClass = (s) => (s === null || s === undefined ? 'muted' : s < 50 ? 'bad' : s < 80 ? 'warn' : 'good');

// ---- the API -------------------------------------------------------------------------------

class NeedToken extends Error {}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  const token = sessionStorage.getItem('vigil-token');
  if (token) headers.authorization = `Bearer ${token}`;
  if (options.body) headers['content-type'] = 'application/json';
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) throw new NeedToken();
  if (response.status === 204) return null;
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${path}: ${response.status}`);
  return body;
}

function tokenForm(retry) {
  const input = el('input', { type: 'password', id: 'token', autocomplete: 'off', required: true });
  return panel('An API token is needed',
    el('p', {}, 'This Vigil has API tokens configured. Give yours: it is kept in this browser tab only.'),
    el('form', { class: 'inline', onsubmit: (e) => { e.preventDefault(); sessionStorage.setItem('vigil-token', input.value); retry(); } },
      el('label', { for: 'token' }, 'Token', input), el('button', { type: 'submit', class: 'primary' }, 'Use token')));
}

// ---- charts --------------------------------------------------------------------------------

function chart(label, option, tall = false) {
  const node = el('div', { class: `chart${tall ? ' tall' : ''}`, role: 'img', 'aria-label': label });
  requestAnimationFrame(() => {
    const theme = document.documentElement.dataset.theme === 'dark' ? 'dark' : null;
    const c = echarts.init(node, theme, { renderer: 'canvas' });
    c.setOption({ backgroundColor: 'transparent', aria: { enabled: true }, animation: false, ...option });
    charts.push(c);
    node.dataset.drawn = 'true';
  });
  return { node };
}

function disposeCharts() {
  while (charts.length) charts.pop().dispose();
}

window.addEventListener('resize', () => charts.forEach((c) => c.resize()));

// The time ranges of the picker: up to 24 h from the live state, longer from the warehouse
// (embedded Parquet or ClickHouse), with a step that keeps charts to a few hundred points.
const WINDOWS = {
  '5m': { hours: 1 / 12, step: '1m', live: true },
  '1h': { hours: 1, step: '5m', live: true },
  '24h': { hours: 24, step: '1h', live: true },
  '7d': { hours: 7 * 24, step: '1h', live: false },
  '30d': { hours: 30 * 24, step: '6h', live: false },
};

/// The window as a range of the analytics store: [now - window, now), ending on a minute.
function range(window) {
  const to = new Date(Math.floor(Date.now() / 60e3) * 60e3);
  return { from: new Date(to.getTime() - WINDOWS[window].hours * 3600e3).toISOString(), to: to.toISOString() };
}

/// The query parameters that ask for `window`: the live window, or the warehouse's range.
function span(window) {
  if (WINDOWS[window].live) return `window=${window}`;
  const { from, to } = range(window);
  return `from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}`;
}

async function series(metric, groupBy, window) {
  return api(`/api/v1/timeseries?metric=${metric}&group_by=${encodeURIComponent(groupBy)}&step=${WINDOWS[window].step}&${span(window)}&limit=100`);
}

async function reputation(scope, window) {
  return api(`/api/v1/reputation?scope=${encodeURIComponent(scope)}&${span(window)}`);
}

function sumPoints(answer) {
  const sums = new Map();
  for (const s of answer.series) for (const p of s.points) sums.set(p.at, (sums.get(p.at) || 0) + p.value);
  return [...sums.entries()].sort((a, b) => a[0].localeCompare(b[0]));
}

// ---- pages ---------------------------------------------------------------------------------

function connectHelp() {
  const origin = location.origin;
  return panel('No events yet: connect a source',
    el('p', {}, 'Vigil has not seen an event. Point an MTA or a relay at it, or try it with synthetic traffic.'),
    el('h3', {}, 'KumoMTA'),
    el('pre', {}, `kumo.on('init', function()\n  kumo.configure_log_hook { name = 'vigil', headers = { 'Subject' } }\nend)\n-- and post each record to ${origin}/ingest/kumomta (deploy/kumomta/vigil_log_hook.lua)`),
    el('h3', {}, 'Relays'),
    el('p', {}, `Webhooks go to ${origin}/ingest/<relay>: ses, sendgrid, mailgun, postmark, sparkpost, brevo, mailjet, postal, elasticemail (docs/relays.md).`),
    el('h3', {}, 'A demo'),
    el('pre', {}, 'vigil run --demo'));
}

async function overview(window) {
  const metrics = ['attempts', 'delivered', 'deferred', 'bounced', 'complaints'];
  // Every answer asked at once: the page waits for the slowest, not for two rounds.
  const [state, providers, pairs, throttles, alerts, dead, ...answers] = await Promise.all([
    api('/api/v1/state'),
    reputation('provider', window),
    reputation('egress_source,provider', window),
    api('/api/v1/throttles'),
    api('/api/v1/alerts?state=firing'),
    api('/api/v1/deadletters?limit=1'),
    ...metrics.map((m) => series(m, 'provider', window)),
  ]);
  if (state.offset === 0) return [el('h1', {}, 'Overview'), connectHelp()];
  const volume = answers[0];
  const totals = Object.fromEntries(metrics.map((m, i) => [m, sumPoints(answers[i])]));
  const times = totals.attempts.map(([at]) => at);
  const ratesOver = ['deferred', 'bounced', 'complaints'].map((m) => ({
    name: m, type: 'line', showSymbol: false,
    data: totals[m].map(([at, v], i) => [at, totals.attempts[i] && totals.attempts[i][1] ? (100 * v) / totals.attempts[i][1] : 0]),
  }));
  const worst = pairs.rows.filter((r) => r.score).sort((a, b) => a.score.value - b.score.value).slice(0, 10);
  return [
    el('h1', {}, 'Overview'),
    el('div', { class: 'grid' },
      panel('Volume by provider', chart('Attempts per step by provider', {
        tooltip: { trigger: 'axis' }, legend: { type: 'scroll', top: 0 }, grid: { left: 50, right: 10, top: 40, bottom: 30 },
        xAxis: { type: 'time' }, yAxis: { type: 'value', name: 'attempts' },
        series: volume.series.map((s) => ({ name: s.provider, type: 'bar', stack: 'v', data: s.points.map((p) => [p.at, p.value]) })),
      }).node),
      panel('Deferral, bounce and complaint rates', chart('Deferred, bounced and complaint rates over time, percent of attempts', {
        tooltip: { trigger: 'axis', valueFormatter: (v) => `${v.toFixed(2)} %` }, legend: { top: 0 }, grid: { left: 50, right: 10, top: 40, bottom: 30 },
        xAxis: { type: 'time' }, yAxis: { type: 'value', name: '%' }, series: ratesOver,
      }).node),
      widePanel('Providers', el('div', { class: 'cards' }, providers.rows.map((r) => el('div', { class: 'card' },
        link('provider', { provider: r.provider }, r.provider),
        el('div', { class: `score ${scoreClass(r.score && r.score.value)}` }, r.score ? r.score.value.toFixed(0) : '–'),
        el('div', { class: 'muted' }, `${r.attempts} attempts · deferred ${pct(r.rates.deferral && r.rates.deferral.value)}`))))),
      widePanel(WINDOWS[window].live ? 'Worst egress source × provider now' : 'Worst egress source × provider', table(['pair', 'score', 'attempts', 'deferral', 'block', 'complaint'],
        worst.map((r) => [link('pair', { egress_source: r.egress_source, provider: r.provider }, `${r.egress_source} × ${r.provider}`),
          el('span', { class: scoreClass(r.score.value) }, r.score.value.toFixed(0)), r.attempts, rate(r.rates.deferral), rate(r.rates.block), rate(r.rates.complaint)]), [1, 2])),
      widePanel('Firing alerts', alerts.alerts.length ? table(['rule', 'scope', 'summary'],
        alerts.alerts.map((a) => [a.rule, [a.labels.egress_source, a.labels.provider].filter(Boolean).join(' × '), a.summary])) : el('p', { class: 'muted' }, 'None firing.')),
      widePanel('Actions in force', throttles.active.length ? [table(['action', 'target', 'expires', 'reason'],
        throttles.active.slice(0, 10).map((d) => [d.action, describeTarget(d.target), when(d.expires), clip(d.reason)])),
      throttles.active.length > 10 ? link('decisions', {}, `All ${throttles.active.length} actions in force`) : null] : el('p', { class: 'muted' }, 'None.')),
      widePanel('Ingest', table(['log offset', 'dead letters', 'scopes', 'suppressed'], [[state.offset, dead.total, state.scopes, state.suppressions]], [0, 1, 2, 3]))),
  ];
}

function describeTarget(target) {
  return Object.entries(target || {}).filter(([, v]) => v !== null && v !== undefined).map(([k, v]) => `${k}=${v}`).join(' ');
}

const HEAT_METRICS = { score: 'Score', deferral: 'Deferral rate', block: 'Block rate', bounce: 'Bounce rate', complaint: 'Complaint rate' };

async function heatmap(window, params) {
  const metric = HEAT_METRICS[params.get('metric')] ? params.get('metric') : 'score';
  const pairs = await reputation('egress_source,provider', window);
  const select = el('select', { id: 'metric', onchange: (e) => go('heatmap', { metric: e.target.value, window }) },
    Object.entries(HEAT_METRICS).map(([k, v]) => el('option', { value: k, selected: k === metric }, v)));
  if (!pairs.rows.length) return [el('h1', {}, 'Heat map'), connectHelp()];
  const sources = [...new Set(pairs.rows.map((r) => r.egress_source))].sort();
  const providers = [...new Set(pairs.rows.map((r) => r.provider))].sort();
  const value = (r) => (metric === 'score' ? (r.score ? r.score.value : null) : r.rates[metric] ? 100 * r.rates[metric].value : null);
  const data = pairs.rows.map((r) => [providers.indexOf(r.provider), sources.indexOf(r.egress_source), value(r)]).filter((d) => d[2] !== null);
  const values = data.map((d) => d[2]);
  const c = chart(`${HEAT_METRICS[metric]} per egress source and provider; select a cell to open the pair`, {
    tooltip: { formatter: (p) => `${sources[p.value[1]]} × ${providers[p.value[0]]}: ${p.value[2].toFixed(2)}` },
    grid: { left: 90, right: 20, top: 10, bottom: 80 },
    xAxis: { type: 'category', data: providers }, yAxis: { type: 'category', data: sources },
    visualMap: { min: Math.min(0, ...values), max: Math.max(metric === 'score' ? 100 : 1, ...values), calculable: true, orient: 'horizontal', left: 'center', bottom: 0,
      inRange: { color: metric === 'score' ? ['#b3261e', '#f5c26b', '#146c2e'] : ['#146c2e', '#f5c26b', '#b3261e'] } },
    series: [{ type: 'heatmap', data, label: { show: true, formatter: (p) => p.value[2].toFixed(metric === 'score' ? 0 : 1) } }],
  }, true);
  requestAnimationFrame(() => requestAnimationFrame(() => {
    const instance = echarts.getInstanceByDom(c.node);
    if (instance) instance.on('click', (p) => go('pair', { egress_source: sources[p.value[1]], provider: providers[p.value[0]], window }));
  }));
  // The same cells as links, for the keyboard and screen readers.
  const cells = pairs.rows.map((r) => [link('pair', { egress_source: r.egress_source, provider: r.provider }, `${r.egress_source} × ${r.provider}`), value(r) === null ? '–' : value(r).toFixed(2)]);
  return [el('h1', {}, 'Heat map'), el('label', {}, 'Colour by ', select),
    el('div', { class: 'grid' }, el('div', { class: 'panel wide' }, c.node), panel('Cells', table(['pair', HEAT_METRICS[metric]], cells, [1])))];
}

// The scopes an analyst drills into, by their API name.
const SCOPES = {
  'egress_source,provider': 'Egress source × provider',
  egress_source: 'Egress source (IP)',
  egress_pool: 'Egress pool',
  provider: 'Provider',
  tenant: 'Tenant',
  campaign: 'Campaign',
  sending_domain: 'Sending domain',
};

/// The page of one scope value: the pair and the provider have their own names.
function scopeLink(scope, row, text) {
  const keys = scope.split(',');
  const values = Object.fromEntries(keys.map((k) => [k, row[k]]));
  if (scope === 'egress_source,provider') return link('pair', values, text);
  if (scope === 'provider') return link('provider', values, text);
  return link('scope', { scope, ...values }, text);
}

/// Every value of a scope with its reputation, each a link to its drill-down.
async function scopesPage(window, params) {
  const scope = Object.hasOwn(SCOPES, params.get('scope') || '') ? params.get('scope') : 'egress_source';
  const select = el('select', { id: 'scope', onchange: (e) => go('scopes', { scope: e.target.value, window }) },
    Object.entries(SCOPES).map(([k, v]) => el('option', { value: k, selected: k === scope }, v)));
  const answer = await reputation(scope, window);
  const keys = scope.split(',');
  const rows = answer.rows.slice().sort((a, b) => (a.score ? a.score.value : 101) - (b.score ? b.score.value : 101));
  return [el('h1', {}, 'Scopes'), el('div', { class: 'panel' }, el('label', { for: 'scope' }, 'Scope ', select)),
    widePanel(SCOPES[scope], rows.length ? table(['value', 'score', 'attempts', 'deferral', 'bounce', 'block', 'complaint'],
      rows.map((r) => [scopeLink(scope, r, keys.map((k) => r[k]).join(' × ')),
        el('span', { class: scoreClass(r.score && r.score.value) }, r.score ? r.score.value.toFixed(0) : '–'), r.attempts,
        rate(r.rates.deferral), rate(r.rates.bounce), rate(r.rates.block), rate(r.rates.complaint)]), [1, 2])
      : el('p', { class: 'muted' }, 'No traffic in this window.'))];
}

/// A scope value's drill-down: a pair, an IP, a pool, a provider, a tenant, a campaign or a
/// sending domain.
async function drill(window, params, scope) {
  if (!Object.hasOwn(SCOPES, scope)) return [el('h1', {}, 'Unknown scope'), el('p', {}, `No scope called ${scope}.`)];
  const keys = scope.split(',');
  const wanted = Object.fromEntries(keys.map((k) => [k, params.get(k) || '']));
  const match = (row) => keys.every((k) => row[k] === wanted[k]);
  const title = keys.map((k) => wanted[k]).join(' × ');
  const { from, to } = range(window);
  const filters = keys.map((k) => `&${k}=${encodeURIComponent(wanted[k])}`).join('');
  // Decisions are kept per egress source and provider.
  const decided = keys.every((k) => k === 'egress_source' || k === 'provider');
  const [rep, attempts, deferred, bounced, bounces, decisions] = await Promise.all([
    reputation(scope, window),
    series('attempts', scope, window), series('deferred', scope, window), series('bounced', scope, window),
    api(`/api/v1/bounces?from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}&samples=3${filters}`),
    decided ? api(`/api/v1/decisions?limit=20${filters}`) : Promise.resolve(null),
  ]);
  const row = rep.rows.find(match);
  const line = (name, answer) => ({ name, type: 'line', showSymbol: false, data: (answer.series.find(match) || { points: [] }).points.map((p) => [p.at, p.value]) });
  const classes = row ? Object.entries({ ...row.bounced_by_class, ...row.deferred_by_class }) : [];
  return [
    el('h1', {}, title || 'Unknown scope'), el('p', { class: 'muted' }, SCOPES[scope]),
    el('div', { class: 'grid' },
      widePanel('Reputation', row ? table(['score', 'attempts', 'deferral', 'bounce', 'block', 'complaint'],
        [[el('span', { class: scoreClass(row.score && row.score.value) }, row.score ? row.score.value.toFixed(0) : '–'), row.attempts, rate(row.rates.deferral), rate(row.rates.bounce), rate(row.rates.block), rate(row.rates.complaint)]], [0, 1])
        : el('p', { class: 'muted' }, 'No traffic in this window.')),
      panel('Over time', chart(`Attempts, deferrals and bounces over time for ${title}`, {
        tooltip: { trigger: 'axis' }, legend: { top: 0 }, grid: { left: 50, right: 10, top: 40, bottom: 30 }, xAxis: { type: 'time' }, yAxis: { type: 'value' },
        series: [line('attempts', attempts), line('deferred', deferred), line('bounced', bounced)],
      }).node),
      panel('Classes and signals', classes.length || (row && Object.keys(row.signals_by_name).length)
        ? table(['class or signal', 'count'], [...classes, ...Object.entries(row ? row.signals_by_name : {})].sort((a, b) => b[1] - a[1]), [1])
        : el('p', { class: 'muted' }, 'No failures.')),
      widePanel('Top responses', bounces.classes && bounces.classes.length ? table(['class', 'count', 'example'],
        bounces.classes.map((c) => [c.bounce_class || 'unclassified', c.deferred + c.bounced, clip((c.samples[0] && c.samples[0].response_text) || '', 160)]), [1]) : el('p', { class: 'muted' }, 'None in this window.')),
      decisions ? widePanel('Decisions', decisions.decisions.length ? table(['at', 'action', 'status', 'reason'],
        decisions.decisions.map((d) => [when(d.at), d.action, d.status, clip(d.reason, 160)])) : el('p', { class: 'muted' }, 'None taken.')) : null),
  ];
}

async function alertsPage() {
  const [alerts, silences] = await Promise.all([api('/api/v1/alerts'), api('/api/v1/silences').catch(() => ({ silences: [] }))]);
  const silence = async (labels) => {
    const matchers = Object.fromEntries(Object.entries(labels).filter(([k]) => ['alertname', 'egress_source', 'provider', 'egress_pool', 'tenant', 'campaign', 'sending_domain'].includes(k)));
    const ends = new Date(Date.now() + 3600e3).toISOString();
    await api('/api/v1/silences', { method: 'POST', body: JSON.stringify({ matchers, ends_at: ends, comment: 'silenced from the dashboard', author: 'dashboard' }) });
    render();
  };
  const expire = async (id) => { await api(`/api/v1/silences/${encodeURIComponent(id)}`, { method: 'DELETE' }); render(); };
  return [
    el('h1', {}, 'Alerts'),
    el('div', { class: 'stack' },
      panel('Now', alerts.alerts.length ? table(['rule', 'state', 'scope', 'summary', 'silenced', ''],
        alerts.alerts.map((a) => [a.rule, a.state, [a.labels.egress_source, a.labels.provider].filter(Boolean).join(' × '), a.summary,
          a.silenced_by.length ? 'yes' : 'no',
          el('button', { type: 'button', onclick: () => silence(a.labels), 'aria-label': `Silence 1 h: ${a.rule} ${[a.labels.egress_source, a.labels.provider].filter(Boolean).join(' × ')}` }, 'Silence 1 h')])) : el('p', { class: 'muted' }, 'No alert pending or firing.')),
      panel('Silences', silences.silences.length ? table(['matchers', 'status', 'ends', 'by', ''],
        silences.silences.map((s) => [Object.entries(s.matchers).map(([k, v]) => `${k}=${v}`).join(' '), s.status, when(s.ends_at), s.author,
          s.status === 'expired' ? '' : el('button', { type: 'button', onclick: () => expire(s.id), 'aria-label': `Expire silence ${s.id}` }, 'Expire')])) : el('p', { class: 'muted' }, 'No silence.')),
      panel('History', alerts.history.length ? table(['rule', 'state', 'scope', 'fired', 'resolved'],
        alerts.history.slice(0, 50).map((n) => [n.alert.rule, n.alert.state, [n.alert.labels.egress_source, n.alert.labels.provider].filter(Boolean).join(' × '), when(n.alert.fired_at), when(n.alert.resolved_at)])) : el('p', { class: 'muted' }, 'Nothing fired yet.'))),
  ];
}

async function decisionsPage() {
  const [throttles, decisions] = await Promise.all([api('/api/v1/throttles'), api('/api/v1/decisions?limit=100')]);
  const reason = el('input', { type: 'text', id: 'lift-reason', placeholder: 'lifted from the dashboard' });
  // The lift is written to the log and ends the action when the fold reaches it: wait (a few
  // seconds at most) for it to leave the actions in force, then draw the page again.
  const lift = async (d) => {
    await api('/api/v1/actions/lift', { method: 'POST', body: JSON.stringify({ action_key: d.action_key, author: 'dashboard', reason: reason.value.trim() || 'lifted from the dashboard' }) });
    for (let i = 0; i < 20; i += 1) {
      const now = await api('/api/v1/throttles');
      if (!now.active.some((a) => a.action_key === d.action_key && a.decision_id === d.decision_id)) break;
      await new Promise((resolve) => { setTimeout(resolve, 250); });
    }
    render();
  };
  return [
    el('h1', {}, 'Decisions'),
    el('div', { class: 'stack' },
      panel('In force', throttles.active.length ? [
        el('label', { for: 'lift-reason' }, 'Why lift (kept with the decision) ', reason),
        table(['action', 'target', 'expires', 'rule', ''],
          throttles.active.map((d) => [d.action, describeTarget(d.target), when(d.expires), d.rule,
            el('button', { type: 'button', onclick: () => lift(d), 'aria-label': `Lift ${d.action} ${describeTarget(d.target)}` }, 'Lift')]))]
        : el('p', { class: 'muted' }, 'No action in force.')),
      panel('Latest', decisions.decisions.length ? table(['at', 'status', 'action', 'target', 'reason'],
        decisions.decisions.map((d) => [when(d.at), d.status, d.action, describeTarget(d.target), clip(d.reason, 160)])) : el('p', { class: 'muted' }, 'No decision yet.'))),
  ];
}


async function bouncesPage(window) {
  const { from, to } = range(window);
  const answer = await api(`/api/v1/bounces?from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}&samples=5`);
  if (!answer.classes.length) return [el('h1', {}, 'Bounces'), el('p', { class: 'muted' }, 'No deferral or bounce in this window.')];
  const c = chart('Deferrals and bounces per bounce class', {
    tooltip: { trigger: 'axis' }, legend: { top: 0 }, grid: { left: 170, right: 20, top: 40, bottom: 30 },
    xAxis: { type: 'value' }, yAxis: { type: 'category', inverse: true, data: answer.classes.map((k) => k.bounce_class || 'unclassified') },
    series: [{ name: 'bounced', type: 'bar', stack: 'c', data: answer.classes.map((k) => k.bounced) },
      { name: 'deferred', type: 'bar', stack: 'c', data: answer.classes.map((k) => k.deferred) }],
  }, true);
  return [el('h1', {}, 'Bounces'),
    el('div', { class: 'stack' }, panel('By class', c.node),
      answer.classes.map((k) => panel(`${k.bounce_class || 'unclassified'}: ${k.bounced} bounced, ${k.deferred} deferred`,
        el('h3', {}, 'Decided by'),
        table(['rule', 'bounced', 'deferred'], (k.rules || []).map((r) => [el('code', {}, r.rule || 'not recorded'), r.bounced, r.deferred]), [1, 2]),
        el('h3', {}, 'Latest'),
        table(['when', 'recipient', 'pair', 'rule', 'code', 'response'], k.samples.map((e) => [when(e.occurred_at),
          e.recipient ? link('search', { recipient: e.recipient }, e.recipient) : '',
          e.egress_source && e.provider ? link('pair', { egress_source: e.egress_source, provider: e.provider }, `${e.egress_source} × ${e.provider}`) : (e.provider || ''),
          e.classifier_rule ? el('code', {}, e.classifier_rule) : '',
          [e.smtp_code, e.enhanced_status].filter(Boolean).join(' '), clip(e.response_text, 200)])))))];
}

async function searchPage(window, params) {
  const recipient = params.get('recipient') || '';
  const messageId = params.get('message_id') || '';
  const input = el('input', { id: 'recipient', type: 'search', value: recipient, placeholder: 'user@example.com' });
  const message = el('input', { id: 'message-id', type: 'search', value: messageId });
  const form = el('form', { class: 'inline', role: 'search', onsubmit: (e) => { e.preventDefault(); go('search', { recipient: input.value.trim(), message_id: message.value.trim() }); } },
    el('label', { for: 'recipient' }, 'Recipient', input), el('label', { for: 'message-id' }, 'Message id', message),
    el('button', { type: 'submit', class: 'primary' }, 'Search'));
  const out = [el('h1', {}, 'Recipient and message search'), el('div', { class: 'panel' }, form)];
  if (!recipient && !messageId) return [...out, el('p', { class: 'muted' }, 'The timeline of one recipient or message, newest first, and whether the recipient is suppressed.')];
  const query = new URLSearchParams({ limit: '200' });
  if (recipient) query.set('recipient', recipient);
  if (messageId) query.set('message_id', messageId);
  const [events, suppressed] = await Promise.all([
    api(`/api/v1/events?${query}`),
    recipient ? api(`/api/v1/suppressions?recipient=${encodeURIComponent(recipient)}`) : Promise.resolve({ rows: [] }),
  ]);
  const status = recipient ? (suppressed.rows.length
    ? el('p', { class: 'bad' }, `Suppressed: ${suppressed.rows[0].reason}${suppressed.rows[0].class ? ` (${suppressed.rows[0].class})` : ''} since ${when(suppressed.rows[0].first_seen)}`)
    : el('p', { class: 'good' }, 'Not suppressed.')) : null;
  return [...out, el('div', { class: 'stack' },
    panel('Status', status || el('p', { class: 'muted' }, 'Give a recipient to see whether it is suppressed.')),
    panel(`Timeline (${events.rows.length}${events.next ? '+' : ''} events)`, events.rows.length ? table(['when', 'kind', 'recipient', 'pair', 'class', 'code', 'response'],
      events.rows.map((e) => [when(e.occurred_at), e.kind, e.recipient || '', [e.egress_source, e.provider].filter(Boolean).join(' × '), e.bounce_class || '',
        [e.smtp_code, e.enhanced_status].filter(Boolean).join(' '), clip(e.response_text, 160)])) : el('p', { class: 'muted' }, 'No event found.')))];
}

async function suppressionsPage(window, params) {
  const domain = params.get('domain') || '';
  const input = el('input', { id: 'domain', type: 'search', value: domain, placeholder: 'gmail.com' });
  const query = new URLSearchParams({ limit: '100' });
  if (domain) query.set('domain', domain);
  const page = await api(`/api/v1/suppressions?${query}`);
  const csv = `/api/v1/suppressions?format=csv${domain ? `&domain=${encodeURIComponent(domain)}` : ''}`;
  return [el('h1', {}, 'Suppressions'),
    el('div', { class: 'panel' }, el('form', { class: 'inline', role: 'search', onsubmit: (e) => { e.preventDefault(); go('suppressions', { domain: input.value.trim() }); } },
      el('label', { for: 'domain' }, 'Recipient domain', input), el('button', { type: 'submit', class: 'primary' }, 'Filter'),
      el('a', { href: csv, download: 'suppressions.csv' }, 'Export CSV'))),
    el('div', { class: 'stack' }, panel(`${page.total} suppressed`, page.rows.length ? table(['recipient', 'reason', 'class', 'source', 'since', 'events'],
      page.rows.map((r) => [link('search', { recipient: r.recipient }, r.recipient), r.reason, r.class || '', r.source, when(r.first_seen), r.events]), [5]) : el('p', { class: 'muted' }, 'Nobody is suppressed.')))];
}

async function dmarcPage(window) {
  const to = new Date();
  const from = new Date(to.getTime() - 30 * 86400e3);
  const answer = await api(`/api/v1/dmarc?from=${encodeURIComponent(from.toISOString())}&to=${encodeURIComponent(to.toISOString())}&group_by=sending_domain,source_ip`);
  return [el('h1', {}, 'DMARC (last 30 days of reports)'),
    el('div', { class: 'stack' }, panel('By sending domain and source IP', answer.rows.length ? table(['sending domain', 'source IP', 'ours', 'messages', 'DMARC pass', 'DMARC fail', 'DKIM pass', 'SPF pass', 'quarantined', 'rejected'],
      answer.rows.map((r) => [r.sending_domain || '', r.source_ip || '', r.known_source === false ? el('span', { class: 'bad' }, 'no') : 'yes', r.messages, r.dmarc_pass, r.dmarc_fail, r.dkim_pass, r.spf_pass, r.quarantined, r.rejected]), [3, 4, 5, 6, 7, 8, 9])
      : el('p', { class: 'muted' }, 'No DMARC aggregate report yet: point a DMARC mailbox at Vigil ([[sources.imap]]) or POST reports to /ingest/dmarc (docs/relays.md).')))];
}

const PAGES = {
  overview: (w) => overview(w),
  heatmap: (w, p) => heatmap(w, p),
  pair: (w, p) => drill(w, p, 'egress_source,provider'),
  provider: (w, p) => drill(w, p, 'provider'),
  scope: (w, p) => drill(w, p, p.get('scope') || ''),
  scopes: (w, p) => scopesPage(w, p),
  alerts: () => alertsPage(),
  decisions: () => decisionsPage(),
  bounces: (w) => bouncesPage(w),
  search: (w, p) => searchPage(w, p),
  suppressions: (w, p) => suppressionsPage(w, p),
  dmarc: (w) => dmarcPage(w),
};

async function render() {
  const { page, params } = route();
  const window = Object.hasOwn(WINDOWS, params.get('window') || '') ? params.get('window') : '1h';
  windowSelect.value = window;
  refreshBox.checked = params.get('refresh') !== '0';
  for (const a of document.querySelectorAll('nav a')) {
    if (a.dataset.page === page) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const draw = PAGES[page] || PAGES.overview;
  try {
    const content = await draw(window, params);
    disposeCharts();
    view.replaceChildren(...content);
    view.dataset.page = page;
    status.textContent = `Updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    disposeCharts();
    if (error instanceof NeedToken) view.replaceChildren(tokenForm(render));
    else view.replaceChildren(panel('Could not load this page', el('p', {}, error.message)));
  }
  clearTimeout(timer);
  if (refreshBox.checked) timer = setTimeout(render, 30000);
}

function applyTheme(theme) {
  document.documentElement.dataset.theme = theme;
  themeButton.setAttribute('aria-pressed', String(theme === 'dark'));
  localStorage.setItem('vigil-theme', theme);
}

windowSelect.addEventListener('change', () => {
  const { page, params } = route();
  params.set('window', windowSelect.value);
  go(page, params);
});
refreshBox.addEventListener('change', () => {
  const { page, params } = route();
  if (refreshBox.checked) params.delete('refresh'); else params.set('refresh', '0');
  go(page, params);
});
themeButton.addEventListener('click', () => {
  applyTheme(document.documentElement.dataset.theme === 'dark' ? 'light' : 'dark');
  render();
});
window.addEventListener('hashchange', () => { render(); view.focus(); });
applyTheme(localStorage.getItem('vigil-theme') || (matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light'));
render();
