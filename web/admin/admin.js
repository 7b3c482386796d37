// The admin dashboard: polls the server's admin JSON routes (all behind the
// session cookie) and draws what they say. Everything shown is set with
// textContent, never as HTML: channel names, user info and log messages
// come from clients.
//
// Requests that change something carry the session's CSRF token in the
// X-CSRF-Token header; the server refuses them without it.

import { Herald } from './vendor/herald-client.js';

const $ = (id) => document.getElementById(id);
const STATS_EVERY = 1000;
const LISTS_EVERY = 5000;
const TAP_KEEP = 50;

let csrf = '';

/** Calls an admin route; a lost session sends the page back to the login. */
async function call(path, { method = 'GET', body } = {}) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET') {
    headers['Content-Type'] = 'application/json';
    headers['X-CSRF-Token'] = csrf;
  }
  const resp = await fetch(`/admin/api/${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'same-origin',
    cache: 'no-store',
  });
  if (resp.status === 401) {
    location.assign('/admin/login');
    throw new Error('not logged in');
  }
  const data = await resp.json().catch(() => ({}));
  // Errors are {"error": {"code", "message", "field"}}, as the HTTP API's.
  if (!resp.ok) throw new Error(data.error?.message || `HTTP ${resp.status}`);
  return data;
}

function problem(err) {
  const p = $('problem');
  p.textContent = err ? `Cannot reach the server: ${err.message}` : '';
  p.hidden = !err;
}

function row(cells) {
  const tr = document.createElement('tr');
  for (const c of cells) {
    const td = document.createElement('td');
    if (c && typeof c === 'object') {
      td.textContent = c.text;
      if (c.className) td.className = c.className;
    } else {
      td.textContent = c;
    }
    tr.append(td);
  }
  return tr;
}

const fmt = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

// ---- charts

function chart(el, series) {
  const opts = {
    width: Math.max(el.clientWidth, 200),
    height: 160,
    legend: { show: series.length > 1 },
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
    axes: [{ stroke: '#8a90a2', grid: { stroke: '#8a90a222' } }, { stroke: '#8a90a2', grid: { stroke: '#8a90a222' }, size: 50 }],
    series: [{}, ...series.map(([label, stroke]) => ({ label, stroke, width: 2, points: { show: false } }))],
  };
  return new uPlot(opts, [[], ...series.map(() => [])], el);
}

const charts = {
  connections: chart($('chart-connections'), [['connections', '#4f5bd5']]),
  rates: chart($('chart-rates'), [['in', '#1f9d55'], ['out', '#4f5bd5'], ['published', '#c98a04']]),
  slow: chart($('chart-slow'), [['slow disconnects', '#d64545']]),
};

addEventListener('resize', () => {
  for (const [id, c] of Object.entries(charts)) c.setSize({ width: Math.max($(`chart-${id}`).clientWidth, 200), height: 160 });
});

function drawSamples(samples) {
  const t = samples.map((s) => s.t / 1000);
  charts.connections.setData([t, samples.map((s) => s.connections)]);
  charts.rates.setData([t, samples.map((s) => s.in_per_sec), samples.map((s) => s.out_per_sec), samples.map((s) => s.published_per_sec)]);
  charts.slow.setData([t, samples.map((s) => s.slow_disconnects)]);
}

// ---- polling

async function pollStats() {
  const s = await call('stats');
  s.samples ??= [];
  $('connections').textContent = s.connections;
  $('channel-count').textContent = s.channels;
  $('slow').textContent = s.slow_consumers;
  const last = s.samples.at(-1);
  $('in-rate').textContent = last ? fmt.format(last.in_per_sec) : '–';
  $('out-rate').textContent = last ? fmt.format(last.out_per_sec) : '–';
  $('pub-rate').textContent = last ? fmt.format(last.published_per_sec) : '–';
  const ready = $('ready');
  ready.textContent = s.ready === 'ok' ? 'ready' : `not ready: ${s.ready}`;
  ready.dataset.state = s.ready === 'ok' ? 'ok' : 'bad';
  $('node').textContent = `${s.version} · broker ${s.broker} · up ${Math.floor(s.uptime_seconds / 60)} min`;
  drawSamples(s.samples);
  drawWebhooks(s.webhooks);
  drawOverflow(s.overflow ?? []);
}

// drawOverflow shows, per namespace with an overflow policy or deltas, the
// publications conflated or dropped from slow subscribers' queues, and
// those sent as deltas with the bytes that saved.
function drawOverflow(rows) {
  $('overflow').hidden = rows.length === 0;
  $('overflow-rows').replaceChildren(...rows.map((r) => row([
    r.namespace === '' ? '(no namespace)' : r.namespace,
    { text: String(r.conflated), className: 'num' },
    { text: String(r.dropped), className: 'num' },
    { text: String(r.deltas ?? 0), className: 'num' },
    { text: String(r.delta_bytes_saved ?? 0), className: 'num' },
  ])));
}

// drawWebhooks shows what this node's webhooks did. Only the leading node
// delivers (and sees the outbox); the others record.
function drawWebhooks(w) {
  $('webhooks').hidden = !w?.enabled;
  if (!w?.enabled) return;
  $('webhooks-role').textContent = w.leading ? '· this node delivers' : '· another node delivers';
  $('wh-pending').textContent = w.leading ? String(w.pending) : '–';
  $('wh-delivered').textContent = String(w.delivered);
  $('wh-failures').textContent = String(w.failures);
  $('wh-dropped').textContent = String(w.dropped);
  const err = $('wh-error');
  err.hidden = !w.retrying;
  err.textContent = w.retrying ? `Retrying: ${w.last_error} (since ${new Date(w.last_error_at).toLocaleTimeString()})` : '';
}

let channels = [];

function drawChannels() {
  const filter = $('channels-filter').value.trim();
  const shown = channels.filter((c) => c.name.includes(filter));
  $('channels').replaceChildren(...shown.map((c) => {
    const tr = row([c.name, { text: String(c.subscribers), className: 'num' }]);
    tr.tabIndex = 0;
    tr.title = 'Use this channel in the forms';
    tr.addEventListener('click', () => pick(c.name));
    return tr;
  }));
  $('channels-empty').hidden = channels.length > 0;
}

function pick(name) {
  $('presence-channel').value = name;
  $('publish-channel').value = name;
  $('tap-channel').value = name;
}

async function pollChannels() {
  const r = await call('channels');
  channels = r.channels;
  $('channels-total').textContent = r.total > r.channels.length ? `(top ${r.channels.length} of ${r.total})` : `(${r.total})`;
  drawChannels();
}

async function pollErrors() {
  const r = await call('errors');
  $('errors').replaceChildren(...r.entries.map((e) => row([
    new Date(e.time).toLocaleTimeString(),
    { text: e.level, className: `level-${e.level.toLowerCase()}` },
    e.msg,
    (e.attrs || []).join(' '),
  ])));
  $('errors-empty').hidden = r.entries.length > 0;
  $('errors-total').textContent = r.total > r.entries.length ? `(last ${r.entries.length} of ${r.total})` : '';
}

function every(ms, f) {
  const tick = async () => {
    try {
      await f();
      problem(null);
    } catch (err) {
      problem(err);
    }
    setTimeout(tick, ms);
  };
  tick();
}

// ---- forms

$('channels-filter').addEventListener('input', drawChannels);

$('presence-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const ch = $('presence-channel').value.trim();
  try {
    const r = await call(`presence?channel=${encodeURIComponent(ch)}`);
    $('presence-summary').textContent = `${r.count} client(s), ${r.users} user(s) in ${r.channel}, on every node`;
    $('presence').replaceChildren(...r.clients.map((c) => row([c.user || '(anonymous)', c.client, c.info ? JSON.stringify(c.info) : ''])));
  } catch (err) {
    $('presence-summary').textContent = err.message;
    $('presence').replaceChildren();
  }
});

$('publish-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const out = $('publish-result');
  let data;
  try {
    data = JSON.parse($('publish-data').value);
  } catch (err) {
    out.textContent = `Data is not JSON: ${err.message}. To send text, quote it: "hello".`;
    out.dataset.state = 'bad';
    return;
  }
  const body = { channel: $('publish-channel').value.trim(), data };
  const key = $('publish-key').value.trim();
  if (key) body.idempotency_key = key;
  $('publish-send').disabled = true;
  try {
    const r = await call('publish', { method: 'POST', body });
    out.textContent = r.duplicate
      ? `Duplicate: already published with this key (offset ${r.offset}).`
      : r.offset ? `Published to ${body.channel}: offset ${r.offset}, epoch ${r.epoch}.` : `Published to ${body.channel}.`;
    out.dataset.state = 'ok';
  } catch (err) {
    out.textContent = `Not published: ${err.message}`;
    out.dataset.state = 'bad';
  } finally {
    $('publish-send').disabled = false;
  }
});

// The channel tap is an ordinary client of the server's /ws endpoint.
let herald = null;
let tapSub = null;

$('tap-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const ch = $('tap-channel').value.trim();
  const status = $('tap-status');
  if (!herald) {
    herald = new Herald(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`);
    herald.on('state', (e) => { status.dataset.state = e.state; });
    herald.connect().catch(() => {});
  }
  if (tapSub) await tapSub.unsubscribe().catch(() => {});
  $('tap').replaceChildren();
  status.textContent = `Subscribing to ${ch}…`;
  tapSub = herald.subscribe(ch, {
    onMessage: (data, { offset, binary }) => {
      const li = document.createElement('li');
      const text = binary ? `(${data.length} bytes)` : JSON.stringify(data);
      li.textContent = `${new Date().toLocaleTimeString()}${offset ? ` #${offset}` : ''}  ${text}`;
      $('tap').prepend(li);
      while ($('tap').children.length > TAP_KEEP) $('tap').lastElementChild.remove();
    },
    onError: (err) => { status.textContent = `Refused: ${err.code}: ${err.message}`; },
  });
  tapSub.ready.then(
    () => { status.textContent = `Watching ${ch}.`; },
    (err) => { status.textContent = `Not watching ${ch}: ${err.message}`; },
  );
});

$('logout').addEventListener('click', async () => {
  herald?.disconnect();
  try {
    await call('logout', { method: 'POST', body: {} });
  } finally {
    location.assign('/admin/login');
  }
});

// ---- start

csrf = (await call('session')).csrf;
every(STATS_EVERY, pollStats);
every(LISTS_EVERY, pollChannels);
every(LISTS_EVERY, pollErrors);
