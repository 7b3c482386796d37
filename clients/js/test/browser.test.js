// The client in headless Chromium (the system's, never a download) against
// a real `herald serve`.
//
// Chromium refuses ws://127.0.0.1 to pages of other origins, so the page
// must come from the server under test, which serves only its demo at /.
// That page's Content-Security-Policy allows scripts of its own origin and no
// inline script, so the test does not inject the module inline: it answers
// a same-origin URL with index.js, byte for byte, through page.route, and the
// page import()s it — as an app would load the module, under the same CSP.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { chromium } from 'playwright-core';

import { Herald } from '../index.js';
import { startHerald, cleanup } from './herald-server.js';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const source = await readFile(new URL('../index.js', import.meta.url), 'utf8');
// fossil-delta, loaded by the page as an app would bundle or serve it.
const fossilSource = await readFile(new URL('../node_modules/fossil-delta/fossil-delta.js', import.meta.url), 'utf8');

let server;
let browser;
let nodeClient;

before(async () => {
  server = await startHerald();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 60_000,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
});

after(async () => {
  nodeClient?.disconnect();
  await browser?.close().catch(() => {});
  await cleanup();
});

test('in Chromium: publish/subscribe, binary round trip, errors, history', { timeout: 120_000 }, async () => {
  const origin = `http://${server.addr}`;
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(20_000);
  const problems = [];
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error' || msg.type() === 'warning') problems.push(`console ${msg.type()}: ${msg.text()}`);
  });
  await page.route(`${origin}/herald-client/index.js`, (route) =>
    route.fulfill({ status: 200, contentType: 'text/javascript; charset=utf-8', body: source }),
  );
  const resp = await page.goto(`${origin}/`);
  assert.equal(resp.status(), 200);
  assert.match(resp.headers()['content-security-policy'], /script-src 'self'/);

  // In the page: two clients; one subscribes, the other publishes JSON, a
  // string and bytes that are not UTF-8. Every wait in the page is bounded.
  const setup = await page.evaluate(async (url) => {
    const { Herald } = await import('/herald-client/index.js');
    const within = (ms, what, p) =>
      Promise.race([p, new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms))]);
    const a = new Herald(url, { timeout: 5000 });
    const b = new Herald(url, { timeout: 5000 });
    const states = [];
    a.on('state', (e) => states.push(e.state));
    await within(5000, 'connect', Promise.all([a.connect(), b.connect()]));
    const inbox = [];
    let notify = () => {};
    const sub = a.subscribe('chat:browser', {
      onMessage: (data, meta) => {
        inbox.push({ data: data instanceof Uint8Array ? Array.from(data) : data, meta });
        notify();
      },
    });
    await within(5000, 'subscribed', sub.ready);
    window.t = {
      a,
      b,
      sub,
      inbox,
      within,
      // Resolves with the inbox once it holds n messages (maybe already).
      received: (n) =>
        within(
          5000,
          `${n} messages`,
          new Promise((resolve) => {
            notify = () => inbox.length >= n && resolve(inbox);
            notify();
          }),
        ),
    };
    return { states, clientId: a.clientId, globalWebSocket: a._socket instanceof WebSocket };
  }, server.url);
  assert.deepEqual(setup.states, ['connecting', 'connected']);
  assert.match(setup.clientId, /^[A-Za-z0-9_-]{16}$/);
  assert.ok(setup.globalWebSocket, "the browser's own WebSocket");

  const bytes = [...Array.from({ length: 256 }, (_, i) => i), 0x0a, 0xff, 0xfe, 0xc3, 0x28, 0xed, 0xa0, 0x80];
  const fromPage = await page.evaluate(async (bytes) => {
    const { b, received } = window.t;
    const results = [];
    results.push(await b.publish('chat:browser', { text: 'hi from Chromium', n: 1 }));
    results.push(await b.publish('chat:browser', 'a string ✓'));
    results.push(await b.publish('chat:browser', Uint8Array.from(bytes)));
    results.push(await b.publish('chat:browser', Uint8Array.from(bytes).buffer));
    const inbox = await received(4);
    let error;
    try {
      await b.publish('not a channel', 1);
    } catch (err) {
      error = { name: err.name, code: err.code, message: err.message };
    }
    const h = await b.history('chat:browser', { limit: 4 });
    const history = h.publications.map((p) => ({ ...p, data: p.data instanceof Uint8Array ? Array.from(p.data) : p.data }));
    return { results, inbox, error, history };
  }, bytes);

  assert.deepEqual(
    fromPage.results.map((r) => r.offset),
    [1, 2, 3, 4],
  );
  assert.deepEqual(fromPage.inbox, [
    { data: { text: 'hi from Chromium', n: 1 }, meta: { channel: 'chat:browser', offset: 1, binary: false } },
    { data: 'a string ✓', meta: { channel: 'chat:browser', offset: 2, binary: false } },
    { data: bytes, meta: { channel: 'chat:browser', offset: 3, binary: true } },
    { data: bytes, meta: { channel: 'chat:browser', offset: 4, binary: true } },
  ]);
  assert.equal(fromPage.error.name, 'HeraldError');
  assert.equal(fromPage.error.code, 'bad_channel');
  assert.deepEqual(
    fromPage.history.map((p) => [p.offset, p.binary, p.data]),
    [
      [1, false, { text: 'hi from Chromium', n: 1 }],
      [2, false, 'a string ✓'],
      [3, true, bytes],
      [4, true, bytes],
    ],
  );

  // Across runtimes: bytes published from Node arrive in the page.
  nodeClient = new Herald(server.url, { timeout: 5000 });
  await nodeClient.connect();
  const fromNode = Uint8Array.from([0x0a, 0x00, 0xff, 0x80, 0x0a]);
  await nodeClient.publish('chat:browser', fromNode);
  const last = await page.evaluate(async () => (await window.t.received(5))[4]);
  assert.deepEqual(last, { data: Array.from(fromNode), meta: { channel: 'chat:browser', offset: 5, binary: true } });

  await page.evaluate(() => {
    window.t.a.disconnect();
    window.t.b.disconnect();
  });
  assert.deepEqual(problems, [], 'no page errors, console errors or warnings');
  await context.close();
});

test('in Chromium: deltas applied transparently with fossil-delta', { timeout: 120_000 }, async () => {
  const origin = `http://${server.addr}`;
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(20_000);
  const problems = [];
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error' || msg.type() === 'warning') problems.push(`console ${msg.type()}: ${msg.text()}`);
  });
  for (const [file, body] of [
    ['index.js', source],
    ['fossil-delta.js', fossilSource],
  ]) {
    await page.route(`${origin}/herald-client/${file}`, (route) =>
      route.fulfill({ status: 200, contentType: 'text/javascript; charset=utf-8', body }),
    );
  }
  assert.equal((await page.goto(`${origin}/`)).status(), 200);
  const out = await page.evaluate(async (url) => {
    const { Herald } = await import('/herald-client/index.js');
    const { applyDelta } = await import('/herald-client/fossil-delta.js');
    const within = (ms, what, p) =>
      Promise.race([p, new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms))]);
    let deltas = 0;
    const a = new Herald(url, { timeout: 5000, applyDelta: (base, d) => (deltas++, applyDelta(base, d)) });
    const b = new Herald(url, { timeout: 5000 });
    await within(5000, 'connect', Promise.all([a.connect(), b.connect()]));
    const got = [];
    let notify = () => {};
    const sub = a.subscribe('delta:browser', { delta: true, onMessage: (data) => (got.push(data), notify()) });
    const res = await within(5000, 'subscribed', sub.ready);
    const doc = { seq: 0, rows: Array.from({ length: 40 }, (_, i) => ({ id: i, name: `row ${i} ✓`, value: i * 3 })) };
    const want = [];
    for (let i = 0; i < 40; i++) {
      doc.seq = i;
      doc.rows[(i * 7) % 40].value += i;
      want.push(structuredClone(doc));
      await b.publish('delta:browser', doc);
    }
    await within(10000, '40 publications', new Promise((resolve) => (notify = () => got.length >= 40 && resolve()) && notify()));
    a.disconnect();
    b.disconnect();
    return { granted: res.delta, deltas, same: JSON.stringify(got) === JSON.stringify(want) };
  }, server.url);
  assert.equal(out.granted, true);
  assert.ok(out.same, 'the page got every state, full');
  assert.equal(out.deltas, 40 - 2, 'deltas but for the first and the 32nd');
  assert.deepEqual(problems, [], 'no page errors, console errors or warnings');
  await context.close();
});
