// The Portcullis console: plain ES module, no framework, no outside network. Every value from
// the server goes into the page as text (never as HTML).
import init, { Tester } from './tester/portcullis_tester_wasm.js';

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function flash(msg) {
  const f = $('#flash');
  f.textContent = msg;
  f.hidden = !msg;
}

async function api(path, opts = {}) {
  const r = await fetch(path, { credentials: 'same-origin', ...opts });
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = text; }
  if (!r.ok) {
    const msg = (body && (body.error_description || body.error)) || `${r.status}`;
    throw new Error(`${path}: ${msg}`);
  }
  return body;
}

function ago(seconds) {
  if (seconds < 120) return `${seconds}s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)}m`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)}h`;
  return `${Math.round(seconds / 86400)}d`;
}

function when(t) {
  return t ? new Date(typeof t === 'number' ? t * 1000 : t).toISOString().replace('.000', '') : '';
}

// ---- clients --------------------------------------------------------------------------------

const lifespanKeys = (c) => Object.keys(c).filter((k) => k.endsWith('_lifespan') && c[k]);

async function showClients() {
  const tbody = $('#clients-table tbody');
  const clients = await api('/admin/clients');
  tbody.replaceChildren(...clients.map((c) => {
    const meta = c.metadata || {};
    const source = Object.entries(meta).map(([k, v]) => `${k}: ${typeof v === 'string' ? v : JSON.stringify(v)}`);
    return el('tr', { 'data-client': c.client_id },
      el('td', {}, c.client_id),
      el('td', {}, c.client_name || ''),
      el('td', {}, (c.grant_types || []).join(', ')),
      el('td', {}, c.scope || ''),
      el('td', {}, (c.audience || []).join(', ')),
      el('td', {}, lifespanKeys(c).map((k) => el('div', {}, `${k.replace(/_lifespan$/, '')}: ${c[k]}`))),
      el('td', {}, when(c.created_at)),
      el('td', {}, when(c.updated_at)),
      el('td', {}, source.map((s) => el('div', {}, s))),
      el('td', {},
        el('button', { onclick: () => rotateClient(c) }, 'Rotate secret'), ' ',
        el('button', { onclick: () => deleteClient(c) }, 'Delete')));
  }));
}

function newSecret() {
  const b = new Uint8Array(32);
  crypto.getRandomValues(b);
  return btoa(String.fromCharCode(...b)).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function showSecretOnce(clientId, secret) {
  const p = $('#client-secret');
  p.textContent = `client_id: ${clientId}\nclient_secret: ${secret}\n(shown once: copy it now)`;
  p.hidden = false;
}

async function rotateClient(c) {
  if (!confirm(`Give client ${c.client_id} a new secret? The old one stops working now.`)) return;
  try {
    const full = await api(`/admin/clients/${encodeURIComponent(c.client_id)}`);
    const secret = newSecret();
    await api(`/admin/clients/${encodeURIComponent(c.client_id)}`, {
      method: 'PUT', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ ...full, client_secret: secret }),
    });
    showSecretOnce(c.client_id, secret);
    await showClients();
  } catch (e) { flash(e.message); }
}

async function deleteClient(c) {
  if (!confirm(`Delete client ${c.client_id}? Its tokens stop being issued.`)) return;
  try {
    await api(`/admin/clients/${encodeURIComponent(c.client_id)}`, { method: 'DELETE' });
    await showClients();
  } catch (e) { flash(e.message); }
}

async function createClient(ev) {
  ev.preventDefault();
  const f = new FormData(ev.target);
  const split = (k) => String(f.get(k) || '').split(/[\s,]+/).filter(Boolean);
  const body = {
    client_name: f.get('client_name'),
    grant_types: split('grant_types'),
    scope: String(f.get('scope') || ''),
    audience: split('audience'),
  };
  if (!confirm(`Create client ${body.client_name}?`)) return;
  try {
    const c = await api('/admin/clients', {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
    });
    showSecretOnce(c.client_id, c.client_secret);
    ev.target.reset();
    await showClients();
  } catch (e) { flash(e.message); }
}

// ---- rules ----------------------------------------------------------------------------------

let rulesView = null;

async function loadRules() {
  rulesView = await api('/console/api/rules');
  return rulesView;
}

async function showRules() {
  const v = await loadRules();
  const groups = $('#rules-groups');
  $('#rules-unavailable').hidden = v.available;
  if (!v.available) {
    $('#rules-unavailable').textContent = v.reason;
    groups.replaceChildren();
    return;
  }
  $('#rules-errors').replaceChildren(...(v.errors || []).map((e) => el('p', { class: 'error' }, e)));
  const byWorkload = new Map();
  for (const r of v.rules) {
    const k = r.workload || '(no workload)';
    if (!byWorkload.has(k)) byWorkload.set(k, []);
    byWorkload.get(k).push(r);
  }
  const configs = new Map(v.workloads.map((w) => [w.workload, w]));
  // Kubernetes mode also shows the Ready condition the leader wrote on each Rule.
  const k8s = v.mode === 'kubernetes';
  const written = (r) => (r.written
    ? el('td', { class: r.written.ready ? 'ready' : 'notready' }, `${r.written.status} ${r.written.reason || ''}`)
    : el('td', { class: 'hint' }, 'not written yet'));
  groups.replaceChildren(...[...byWorkload.entries()].map(([workload, rules]) => {
    const w = configs.get(workload);
    const size = w ? el('p', {},
      `Rendered ${w.resource_name}: ${w.resource_bytes} bytes of ${w.limit_bytes} `,
      el('span', { class: 'bar' }, el('span', { style: `width:${Math.min(100, (100 * w.resource_bytes) / w.limit_bytes).toFixed(1)}%` })))
      : el('p', { class: 'hint' }, 'No filter configuration (no rule is enforced here).');
    return el('div', { class: 'group', 'data-workload': workload },
      el('h3', {}, `Workload ${workload}`),
      el('table', {}, el('thead', {}, el('tr', {}, ['Rule', 'id', 'Ready', 'Reason', 'Message', k8s ? 'Status on the Rule' : null].map((h) => h && el('th', {}, h)))),
        el('tbody', {}, rules.map((r) => el('tr', { 'data-rule': `${r.namespace}/${r.name}` },
          el('td', {}, `${r.namespace}/${r.name}`),
          el('td', {}, r.id),
          el('td', { class: r.ready ? 'ready' : 'notready' }, r.ready ? 'True' : 'False'),
          el('td', { class: r.reason === 'Overlapping' ? 'warn' : '' }, r.reason),
          el('td', {}, r.message),
          k8s ? written(r) : null)))),
      size,
      w ? el('details', {}, el('summary', {}, 'Compiled filter configuration'),
        el('pre', {}, JSON.stringify(w.filter_config, null, 2))) : null);
  }));
}

// ---- keys -----------------------------------------------------------------------------------

const series = { tokens: [], introspections: [] };
let lastSample = null;
let metricsTimer = null;

function sumMetric(text, name) {
  let total = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(name) && (line[name.length] === '{' || line[name.length] === ' ')) {
      const v = Number(line.slice(line.lastIndexOf(' ') + 1));
      if (Number.isFinite(v)) total += v;
    }
  }
  return total;
}

function drawChart(svg, points) {
  const max = Math.max(1, ...points);
  const step = 300 / Math.max(1, points.length - 1);
  const coords = points.map((p, i) => `${(i * step).toFixed(1)},${(78 - (76 * p) / max).toFixed(1)}`);
  const line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
  line.setAttribute('points', coords.join(' '));
  svg.replaceChildren(line);
}

async function sampleMetrics() {
  const r = await fetch('/metrics/prometheus');
  const text = await r.text();
  const now = performance.now();
  const sample = {
    t: now,
    tokens: sumMetric(text, 'portcullis_tokens_issued_total'),
    introspections: sumMetric(text, 'portcullis_introspections_total'),
  };
  if (lastSample) {
    const dt = (sample.t - lastSample.t) / 1000;
    for (const k of ['tokens', 'introspections']) {
      const rate = Math.max(0, (sample[k] - lastSample[k]) / dt);
      series[k].push(rate);
      if (series[k].length > 60) series[k].shift();
      drawChart($(`#chart-${k}`), series[k]);
      $(`#rate-${k}`).textContent = `${rate.toFixed(2)} /s (total ${sample[k]})`;
    }
  }
  lastSample = sample;
}

async function showKeys() {
  const k = await api('/console/api/keys');
  $('#keys-jwks').textContent = JSON.stringify(k.jwks, null, 2);
  $('#keys-rotation').textContent = k.next_rotation
    ? `Next scheduled rotation: ${when(k.next_rotation)} (every ${ago(k.rotation_period_seconds)})`
    : 'No scheduled rotation (--key-rotation is off).';
  $('#keys-table tbody').replaceChildren(...k.keys.map((key) => el('tr', { 'data-kid': key.kid },
    el('td', {}, key.kid), el('td', {}, key.alg), el('td', {}, key.set),
    el('td', {}, ago(key.age_seconds)),
    el('td', {}, key.retired_at ? `retired, published until ${when(key.retired_at)}` : 'current'))));
  if (!metricsTimer) {
    await sampleMetrics().catch((e) => flash(e.message));
    metricsTimer = setInterval(() => sampleMetrics().catch(() => {}), 2000);
  }
}

// ---- rule tester ----------------------------------------------------------------------------

let wasmReady = null;
const ensureWasm = () => (wasmReady ??= init('/console/tester/portcullis_tester_wasm_bg.wasm'));

async function proxy(config, request) {
  const r = await fetch('/console/api/callout', {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ config, request }),
  });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) return { ok: false, error: body.error_description || body.error || `status ${r.status}` };
  return { ok: true, ...body };
}

// Evaluates `request` against `configText` in the page, answering the core's needs through the
// control plane. Returns the trace.
export async function evaluate(configText, request) {
  await ensureWasm();
  const config = JSON.parse(configText);
  const tester = new Tester(configText);
  const run = tester.start(JSON.stringify(request), Date.now() / 1000);
  try {
    for (let i = 0; i < 64; i++) {
      const need = JSON.parse(run.advance());
      if (need.need === 'done') return need.trace;
      if (need.need === 'keys') {
        for (const url of need.urls) {
          const r = await proxy(config, { method: 'GET', url, headers: [['accept', 'application/json']], body: '', timeout_ms: 5000 });
          if (r.ok) run.keysFetched(url, r.status, r.body);
          else run.keysFailed(url, r.error);
        }
      } else if (need.need === 'callout') {
        const r = await proxy(config, need.request);
        if (r.ok) run.calloutDone(r.status, JSON.stringify(r.headers), r.body);
        else run.calloutFailed();
      }
    }
    throw new Error('the evaluation did not finish');
  } finally {
    run.free();
    tester.free();
  }
}

function stepItems(trace) {
  const items = [];
  const m = trace.matching;
  if (!m) items.push(['failed', 'Refused before matching (unreadable host or path)']);
  else if (m.outcome === 'matched') items.push(['success', `Matched rule ${m.rule}`]);
  else if (m.outcome === 'no_match') items.push(['failed', 'No rule matches']);
  else if (m.outcome === 'ambiguous') items.push(['failed', `Overlapping rules: ${m.rules.join(', ')}`]);
  else items.push(['failed', `Matching rule ${m.rule} failed: ${m.error}`]);
  for (const k of trace.keys) items.push([k.error ? 'failed' : 'success', `Keys ${k.url}: ${k.error ? k.error : `${k.keys} keys`}`]);
  for (const c of trace.callouts) items.push([c.status ? 'success' : 'failed', `Callout ${c.method} ${c.url} → ${c.status ?? 'no answer'}`]);
  const handler = (kind, h) => [h.outcome === 'failed' ? 'failed' : h.outcome === 'success' ? 'success' : '',
    `${kind} ${h.handler}: ${h.outcome.replace(/_/g, ' ')}${h.subject ? ` (subject ${h.subject})` : ''}${h.reason ? ` [${h.reason}]` : ''}${h.message ? ` ${h.message}` : ''}`];
  for (const a of trace.authenticators) items.push(handler('Authenticator', a));
  for (const a of trace.authorizer) items.push(handler('Authorizer', a));
  if (trace.mutators.length) items.push(['success', `Mutators: ${trace.mutators.join(', ')}`]);
  return items;
}

function showTrace(trace) {
  const d = trace.decision;
  $('#t-decision').textContent = d.allowed ? 'allow' : 'deny';
  $('#t-decision').className = d.allowed ? 'ready' : 'notready';
  $('#t-status').textContent = d.allowed ? '200' : String(d.status);
  $('#t-steps').replaceChildren(...stepItems(trace).map(([cls, text]) => el('li', { class: cls }, text)));
  $('#t-response').textContent = d.allowed
    ? ['Forwarded to the workload with:', ...d.set_headers.map(([k, v]) => `  set ${k}: ${v}`), ...d.remove_headers.map((k) => `  remove ${k}`)].join('\n')
    : [`HTTP ${d.status} (${d.reason})`, ...d.response_headers.map(([k, v]) => `${k}: ${v}`), '', d.body, '', `cause: ${d.message}`].join('\n');
  $('#t-trace').textContent = JSON.stringify(trace, null, 2);
  $('#t-result').hidden = false;
}

async function runTester(ev) {
  ev.preventDefault();
  $('#t-error').hidden = true;
  $('#t-result').hidden = true;
  const headers = $('#t-headers').value.split('\n').map((l) => l.trim()).filter(Boolean).map((l) => {
    const i = l.indexOf(':');
    if (i <= 0) throw new Error(`header ${JSON.stringify(l)} must be "Name: value"`);
    return [l.slice(0, i).trim(), l.slice(i + 1).trim()];
  });
  const token = $('#t-token').value.trim();
  const request = { method: $('#t-method').value, url: $('#t-url').value.trim(), headers, token: token || null };
  try {
    showTrace(await evaluate($('#t-config').value, request));
  } catch (e) {
    $('#t-error').textContent = String(e.message || e);
    $('#t-error').hidden = false;
  }
  document.body.dataset.testerRuns = String(Number(document.body.dataset.testerRuns || 0) + 1);
}

// A token for the request, from a client of this control plane (see docs/security.md, "Console").
async function mintToken() {
  const out = $('#m-result');
  out.hidden = false;
  const body = {
    client_id: $('#m-client').value,
    client_secret: $('#m-secret').value,
    scope: $('#m-scope').value.trim(),
    audience: $('#m-audience').value.split(/[\s,]+/).filter(Boolean),
  };
  try {
    const t = await api('/console/api/token', {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
    });
    $('#t-token').value = t.access_token;
    out.className = 'hint';
    out.textContent = `Token for ${body.client_id} (scope "${t.scope}", expires in ${t.expires_in}s) put in the request.`;
  } catch (e) {
    out.className = 'error';
    out.textContent = e.message;
  }
  $('#m-secret').value = '';
  document.body.dataset.mints = String(Number(document.body.dataset.mints || 0) + 1);
}

async function loadMintClients() {
  const select = $('#m-client');
  if (select.options.length > 1) return;
  const clients = await api('/admin/clients').catch(() => []);
  for (const c of clients.filter((x) => (x.grant_types || []).includes('client_credentials'))) {
    select.append(el('option', { value: c.client_id, 'data-scope': c.scope || '', 'data-audience': (c.audience || []).join(' ') },
      c.client_name ? `${c.client_name} (${c.client_id})` : c.client_id));
  }
}

function pickMintClient() {
  const o = $('#m-client').selectedOptions[0];
  if (!o || !o.value) return;
  $('#m-scope').value = o.dataset.scope;
  $('#m-audience').value = o.dataset.audience;
}

async function showTester() {
  await ensureWasm();
  await loadMintClients();
  const v = rulesView || await loadRules().catch(() => null);
  const preset = $('#t-preset');
  if (v && v.available && preset.options.length === 1) {
    for (const w of v.workloads) preset.append(el('option', { value: w.workload }, `Workload ${w.workload} (${w.rule_ids.length} rules)`));
    if (v.workloads.length && !$('#t-config').value) {
      preset.value = v.workloads[0].workload;
      $('#t-config').value = JSON.stringify(v.workloads[0].filter_config, null, 2);
    }
  }
  document.body.dataset.testerReady = 'true';
}

function pickPreset() {
  const w = rulesView && rulesView.workloads.find((x) => x.workload === $('#t-preset').value);
  if (w) $('#t-config').value = JSON.stringify(w.filter_config, null, 2);
}

// A 100-rule decision, timed in this page (the browser test reports it).
export async function benchmark(iterations = 2000) {
  await ensureWasm();
  const rules = [];
  for (let i = 0; i < 100; i++) {
    rules.push({
      id: `r${i}`, match: { url: `<http|https>://<[^/]+>/svc${i}/<.*>`, methods: ['GET'] },
      authenticators: [{ handler: 'anonymous' }], authorizer: { handler: 'allow' },
      mutators: [{ handler: 'header', config: { headers: { 'X-User': '{{ print .Subject }}' } } }],
    });
  }
  const config = JSON.stringify({
    authenticators: { anonymous: { enabled: true } }, authorizers: { allow: { enabled: true } },
    mutators: { header: { enabled: true } }, rules,
  });
  const tester = new Tester(config);
  const request = JSON.stringify({ method: 'GET', url: 'http://bench.local/svc77/items/1', headers: [] });
  let allowed = 0;
  const start = performance.now();
  for (let i = 0; i < iterations; i++) {
    const run = tester.start(request, 1700000000);
    if (JSON.parse(run.advance()).trace.decision.allowed) allowed++;
    run.free();
  }
  const ms = (performance.now() - start) / iterations;
  tester.free();
  return { rules: 100, iterations, allowed, ms_per_decision: ms };
}

window.portcullis = { evaluate, benchmark };

// ---- navigation -----------------------------------------------------------------------------

const pages = { clients: showClients, rules: showRules, keys: showKeys, tester: showTester };

async function route() {
  const name = (location.hash || '#clients').slice(1);
  const show = pages[name] ? name : 'clients';
  for (const p of Object.keys(pages)) {
    $(`#page-${p}`).hidden = p !== show;
    $(`#nav-${p}`).classList.toggle('active', p === show);
  }
  flash('');
  document.body.dataset.page = '';
  try {
    await pages[show]();
  } catch (e) {
    flash(e.message);
  }
  document.body.dataset.page = show;
}

$('#client-form').addEventListener('submit', createClient);
$('#tester-form').addEventListener('submit', runTester);
$('#t-preset').addEventListener('change', pickPreset);
$('#m-run').addEventListener('click', mintToken);
$('#m-client').addEventListener('change', pickMintClient);
window.addEventListener('hashchange', route);
route();
