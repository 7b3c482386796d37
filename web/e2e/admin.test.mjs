// Real-browser test of the admin dashboard: builds the herald binary, runs
// `herald serve` with an admin password on a free loopback port, and drives
// the dashboard in Chromium, loaded from that server: log in (after a wrong
// password), watch the connection count follow WebSocket clients that
// connect and leave, find their channel and presence, see the webhooks
// panel report a backend that answers 503, publish from the form
// and see the message arrive on a WebSocket client, watch a channel with
// the dashboard's own @heraldhq/client, then log out. It saves a screenshot to
// artifacts/dashboard.png and fails on any page error or console error (a
// Content-Security-Policy violation included).
//
// Chromium is the system one (/usr/bin/chromium, or $CHROMIUM_PATH): this
// test never downloads a browser. Run it with `npm test` in this folder.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import http from 'node:http';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..', '..');
const chromiumPath = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const screenshot = path.join(repo, 'artifacts', 'dashboard.png');
const PASSWORD = 'e2e admin password, long enough';

// Bounds, so that a hang fails the test instead of holding CI.
const BUILD_TIMEOUT = 300_000;
const START_TIMEOUT = 30_000;
const STOP_TIMEOUT = 20_000;
const UI_TIMEOUT = 20_000;

const work = await mkdtemp(path.join(tmpdir(), 'herald-admin-e2e-'));
let server;
// The app's webhook endpoint, down on purpose: every call is answered 503,
// so that the dashboard has a failing delivery to show.
const webhookCalls = [];
const backend = http.createServer((req, res) => {
  webhookCalls.push(req.headers['herald-hook']);
  req.resume();
  res.writeHead(503, { 'Content-Type': 'text/plain' }).end('down for maintenance');
});
await new Promise((resolve) => backend.listen(0, '127.0.0.1', resolve));
let browser;

after(async () => {
  await browser?.close().catch(() => {});
  server?.proc.kill('SIGKILL');
  backend.close();
  await rm(work, { recursive: true, force: true });
});

async function buildHerald() {
  const bin = path.join(work, 'herald');
  await promisify(execFile)('go', ['build', '-o', bin, './cmd/herald'], { cwd: repo, timeout: BUILD_TIMEOUT, maxBuffer: 16 << 20 });
  return bin;
}

/** Starts `herald serve` with the admin password in its environment; resolves once it logs its address. */
function startHerald(bin, config) {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('HERALD_')));
  env.HERALD_ADMIN_PASSWORD = PASSWORD;
  const proc = spawn(bin, ['serve', '--addr', '127.0.0.1:0', '--log-format', 'json', '--config', config,
    '--drain-window', '1s', '--shutdown-timeout', '5s'], { env, stdio: ['ignore', 'inherit', 'pipe'] });
  const s = { proc, logs: [] };
  s.exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error(`herald did not log "listening" within ${START_TIMEOUT} ms`)), START_TIMEOUT);
    function fail(err) {
      clearTimeout(timer);
      proc.kill('SIGKILL');
      reject(new Error(`${err.message}\nherald logs:\n${s.logs.join('\n')}`));
    }
    proc.once('error', fail);
    proc.once('exit', (code, signal) => fail(new Error(`herald exited early (code ${code}, signal ${signal})`)));
    readline.createInterface({ input: proc.stderr }).on('line', (line) => {
      s.logs.push(line);
      try {
        const entry = JSON.parse(line);
        if (entry.msg === 'listening') {
          clearTimeout(timer);
          s.addr = entry.addr;
          resolve(s);
        }
      } catch {
        // not a log line of ours
      }
    });
  });
}

async function stopHerald(s) {
  s.proc.kill('SIGTERM');
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`herald did not stop within ${STOP_TIMEOUT} ms`)), STOP_TIMEOUT);
  });
  try {
    return await Promise.race([s.exited, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function newPage(problems) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 1400 } });
  const page = await context.newPage();
  page.setDefaultTimeout(UI_TIMEOUT);
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error') problems.push(`console error: ${msg.text()}`);
  });
  return page;
}

/** Waits until the dashboard's connection count shows n. */
async function connectionsShown(page, n) {
  await page.waitForFunction((want) => document.querySelector('#connections').textContent === String(want), n);
}

test('the admin dashboard, in Chromium, against herald serve', { timeout: 240_000 }, async (t) => {
  const problems = [];
  let admin, clients;
  const base = () => `http://${server.addr}`;

  await t.test('build and start the server', async () => {
    const bin = await buildHerald();
    const config = path.join(work, 'herald.yaml');
    await writeFile(config, `webhook_url: http://127.0.0.1:${backend.address().port}/events\n` +
      'namespaces:\n  - name: ""\n  - name: room\n    presence: true\n    channel_events: true\n');
    server = await startHerald(bin, config);
  });

  await t.test('launch Chromium', async () => {
    browser = await chromium.launch({
      executablePath: chromiumPath,
      headless: true,
      timeout: 60_000,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  });

  await t.test('log in: a wrong password is refused, the right one opens the dashboard', async () => {
    admin = await newPage(problems);
    const resp = await admin.goto(`${base()}/admin/`);
    assert.equal(resp.status(), 200);
    assert.equal(new URL(admin.url()).pathname, '/admin/login', 'sent to the login page');
    await admin.fill('#password', 'not the password at all');
    await admin.click('#login');
    await admin.waitForSelector('#login-error:not([hidden])');
    assert.match(await admin.textContent('#login-error'), /Wrong password/);

    await admin.fill('#password', PASSWORD);
    await admin.click('#login');
    await admin.waitForURL(`${base()}/admin/`);
    await connectionsShown(admin, 0);
    assert.equal(await admin.textContent('#ready'), 'ready');
    assert.ok(await admin.isHidden('#problem'), 'no error shown');
    const cookies = await admin.context().cookies();
    const session = cookies.find((c) => c.name === 'herald_admin');
    assert.ok(session, 'a session cookie');
    assert.equal(session.httpOnly, true, 'HttpOnly');
    assert.equal(session.sameSite, 'Strict', 'SameSite=Strict');
    assert.equal(session.path, '/admin');
    assert.equal(await admin.evaluate(() => document.cookie), '', 'script cannot read the session');
  });

  await t.test('the connection count follows WebSocket clients', async () => {
    clients = await newPage(problems);
    await clients.goto(`${base()}/`); // any page of the server (the demo, idle until joined): same origin
    await clients.evaluate(async () => {
      window.received = [];
      window.sockets = [];
      for (let i = 0; i < 3; i++) {
        const ws = new WebSocket(`ws://${location.host}/ws`, 'herald.v1');
        await new Promise((resolve, reject) => {
          ws.onopen = resolve;
          ws.onerror = () => reject(new Error('WebSocket failed'));
        });
        const subscribed = new Promise((resolve) => {
          ws.onmessage = (e) => {
            const m = JSON.parse(e.data);
            if (m.id === 1) resolve();
            if (m.push === 'pub') window.received.push({ client: i, data: m.data });
          };
        });
        ws.send(JSON.stringify({ id: 1, cmd: 'subscribe', channel: 'room:lobby' }));
        await subscribed;
        window.sockets.push(ws);
      }
    });
    await connectionsShown(admin, 3);
    await clients.evaluate(() => window.sockets.pop().close());
    await connectionsShown(admin, 2);
  });

  await t.test('channels and presence show the clients', async () => {
    const row = admin.locator('#channels tr', { hasText: 'room:lobby' });
    await row.waitFor();
    await admin.waitForFunction(() => [...document.querySelectorAll('#channels tr')]
      .some((tr) => tr.cells[0].textContent === 'room:lobby' && tr.cells[1].textContent === '2'));
    await row.click(); // fills the channel into the forms
    assert.equal(await admin.inputValue('#presence-channel'), 'room:lobby');
    await admin.click('#presence-lookup');
    await admin.waitForFunction(() => document.querySelector('#presence-summary').textContent.startsWith('2 client(s)'));
    assert.equal(await admin.locator('#presence tr').count(), 2);
  });

  await t.test('the webhooks panel shows the failing backend', async () => {
    // room:lobby became occupied: its event is retried against the 503s.
    await admin.waitForFunction(() => !document.querySelector('#webhooks').hidden &&
      Number(document.querySelector('#wh-failures').textContent) >= 1 &&
      !document.querySelector('#wh-error').hidden);
    assert.match(await admin.textContent('#wh-error'), /503/);
    assert.match(await admin.textContent('#webhooks-role'), /this node delivers/);
    assert.equal(await admin.textContent('#wh-pending'), '1');
    assert.equal(await admin.textContent('#wh-delivered'), '0');
    assert.ok(webhookCalls.length >= 1 && webhookCalls.every((h) => h === 'events'), `calls: ${webhookCalls}`);
  });

  await t.test('a message published from the form arrives on a WebSocket client', async () => {
    assert.equal(await admin.inputValue('#publish-channel'), 'room:lobby');
    await admin.fill('#publish-data', '{"text":"hello from the dashboard","n":1}');
    await admin.click('#publish-send');
    await admin.waitForFunction(() => document.querySelector('#publish-result').dataset.state === 'ok');
    assert.match(await admin.textContent('#publish-result'), /^Published to room:lobby/);
    await clients.waitForFunction(() => window.received.length === 2);
    const got = await clients.evaluate(() => window.received);
    for (const r of got) assert.deepEqual(r.data, { text: 'hello from the dashboard', n: 1 });

    // Not JSON: refused in the page, nothing is sent.
    await admin.fill('#publish-data', 'hello');
    await admin.click('#publish-send');
    await admin.waitForFunction(() => document.querySelector('#publish-result').dataset.state === 'bad');
    assert.match(await admin.textContent('#publish-result'), /not JSON/);
  });

  await t.test("the dashboard's own client watches a channel", async () => {
    await admin.fill('#tap-channel', 'room:lobby');
    await admin.click('#tap-watch');
    await admin.waitForFunction(() => document.querySelector('#tap-status').textContent === 'Watching room:lobby.');
    await admin.fill('#publish-data', '"second"');
    await admin.click('#publish-send');
    await admin.locator('#tap li', { hasText: '"second"' }).waitFor();
    await clients.waitForFunction(() => window.received.length === 4);
    await connectionsShown(admin, 3); // the watcher is a connection too
  });

  await t.test('screenshot, with a few seconds of charts', async () => {
    await admin.waitForFunction(() => document.querySelectorAll('#chart-connections canvas').length === 1);
    await admin.waitForTimeout(3000); // a few more samples on the charts
    await mkdir(path.dirname(screenshot), { recursive: true });
    await admin.screenshot({ path: screenshot, fullPage: true });
  });

  await t.test('log out', async () => {
    assert.ok(await admin.isHidden('#problem'), `no error shown: ${await admin.textContent('#problem')}`);
    await admin.click('#logout');
    await admin.waitForURL(`${base()}/admin/login`);
    // The page's context, with whatever cookies it still has.
    const resp = await admin.context().request.get(`${base()}/admin/api/stats`);
    assert.equal(resp.status(), 401, 'the session is over');
    assert.deepEqual(problems, [], 'no page or console errors');
  });

  await t.test('SIGTERM: the server drains and stops cleanly', async () => {
    const { code, signal } = await stopHerald(server);
    assert.equal(signal, null);
    assert.equal(code, 0, `herald exit code; logs:\n${server.logs.join('\n')}`);
    assert.ok(!server.logs.some((l) => l.includes(PASSWORD)), 'the password is never logged');
    server = undefined;
  });

  await browser.close();
  browser = undefined;
});
