// Real-browser test of a deployment: nginx (Debian's, run as a child with
// its own prefix, on deploy/nginx's settings) in front of two `herald serve`
// nodes joined through Redis. Chromium pages load the demo chat page through
// nginx and join chat:lobby over WebSocket through it; a backend publishes
// numbered messages to the channel (HTTP API of node B) while node A is
// drained (SIGTERM, drain_window 3s). A's pages are told 1012, reconnect
// through nginx, which skips the draining node (503) for B, and recover
// what was published meanwhile: every page shows every message exactly once,
// in order. An EventSource reads the same channel over SSE through nginx:
// cut by the drain, the browser's own reconnect (Last-Event-ID) through
// nginx recovers on B, and it too has every message once, in order.
//
// Needs /usr/sbin/nginx and Redis (HERALD_TEST_REDIS, default
// redis://127.0.0.1:6379/0); it skips without them, and fails in CI, where
// .ci/run installs nginx. Run it with `npm test` in this folder.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..', '..');
const chromiumPath = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const nginxPath = '/usr/sbin/nginx';
const redisURL = process.env.HERALD_TEST_REDIS || 'redis://127.0.0.1:6379/0';
const inCI = process.env.CI === 'true';

// Bounds, so that a hang fails the test instead of holding CI.
const BUILD_TIMEOUT = 300_000;
const START_TIMEOUT = 30_000;
const STOP_TIMEOUT = 20_000;
const UI_TIMEOUT = 20_000;
const DRAIN_WINDOW = '3s';
const PAGES = 4;

const work = await mkdtemp(path.join(tmpdir(), 'herald-deploy-e2e-'));
const children = new Set(); // every process this test started, by handle
let browser;

after(async () => {
  await browser?.close().catch(() => {});
  for (const c of children) c.kill('SIGKILL');
  await rm(work, { recursive: true, force: true });
});

/** Why this test cannot run here, or null. */
async function missing() {
  if (!existsSync(nginxPath)) return `${nginxPath} is missing (apt-get install nginx)`;
  const u = new URL(redisURL);
  const ok = await new Promise((resolve) => {
    const s = net.connect({ host: u.hostname, port: Number(u.port || 6379) });
    s.setTimeout(2000, () => { s.destroy(); resolve(false); });
    s.once('connect', () => { s.end(); resolve(true); });
    s.once('error', () => resolve(false));
  });
  return ok ? null : `no Redis answers at ${redisURL} (set HERALD_TEST_REDIS)`;
}

/** A free loopback port: bound, read, released (nginx binds it right after). */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Spawns a child whose exit is a promise; it is killed in after() if still running. */
function child(cmd, args, opts) {
  const proc = spawn(cmd, args, opts);
  children.add(proc);
  proc.exited = new Promise((resolve) => proc.once('exit', (code, signal) => {
    children.delete(proc);
    resolve({ code, signal });
  }));
  return proc;
}

async function waitExit(proc, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not exit within ${STOP_TIMEOUT} ms`)), STOP_TIMEOUT);
  });
  try {
    return await Promise.race([proc.exited, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Starts `herald serve` with only these settings, and resolves once it logs its address. */
function startHerald(bin, name, args, env) {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('HERALD_')));
  const proc = child(bin, ['serve', '--addr', '127.0.0.1:0', '--log-format', 'json', ...args], {
    env: { ...clean, ...env },
    stdio: ['ignore', 'inherit', 'pipe'],
  });
  const node = { name, proc, logs: [] };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error(`herald ${name} did not log "listening" within ${START_TIMEOUT} ms`)), START_TIMEOUT);
    function fail(err) {
      clearTimeout(timer);
      proc.kill('SIGKILL');
      reject(new Error(`${err.message}\nlogs:\n${node.logs.join('\n')}`));
    }
    proc.once('error', fail);
    proc.once('exit', (code, signal) => fail(new Error(`herald ${name} exited early (code ${code}, signal ${signal})`)));
    readline.createInterface({ input: proc.stderr }).on('line', (line) => {
      node.logs.push(line);
      try {
        const entry = JSON.parse(line);
        if (entry.msg === 'listening') {
          clearTimeout(timer);
          node.addr = entry.addr;
          resolve(node);
        }
      } catch {
        // not JSON: kept in logs only
      }
    });
  });
}

/** The nginx.conf this test runs: deploy/nginx's map and locations, an upstream of the two nodes. */
function nginxConf(prefix, port, upstreams) {
  const deploy = path.join(repo, 'deploy', 'nginx');
  return `
worker_processes 1;
pid ${prefix}/nginx.pid;
error_log ${prefix}/error.log info;
events { worker_connections 1024; }
http {
    access_log ${prefix}/access.log;
    client_body_temp_path ${prefix}/tmp/body;
    proxy_temp_path ${prefix}/tmp/proxy;
    fastcgi_temp_path ${prefix}/tmp/fastcgi;
    uwsgi_temp_path ${prefix}/tmp/uwsgi;
    scgi_temp_path ${prefix}/tmp/scgi;
    include ${deploy}/herald-map.conf;
    upstream herald {
        least_conn;
        zone herald 64k;
${upstreams.map((a) => `        server ${a} max_fails=1 fail_timeout=10s;`).join('\n')}
    }
    server {
        listen 127.0.0.1:${port};
        include ${deploy}/herald-locations.conf;
    }
}
`;
}

/** A node's herald_connections gauge, from its own /metrics (not through nginx). */
async function connections(node) {
  const text = await (await fetch(`http://${node.addr}/metrics`, { signal: AbortSignal.timeout(5000) })).text();
  const m = text.match(/^herald_connections (\d+)$/m);
  assert.ok(m, `herald_connections in ${node.name}'s /metrics`);
  return Number(m[1]);
}

async function waitUntil(what, cond, timeoutMs = UI_TIMEOUT) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await cond()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test('browsers through nginx keep receiving while a node drains', { timeout: 240_000 }, async (t) => {
  const why = await missing();
  if (why) {
    if (inCI) assert.fail(`${why}: CI must provide it`);
    t.skip(why);
    return;
  }
  const apiKey = randomBytes(24).toString('hex');
  const prefix = `e2e_deploy_${randomBytes(6).toString('hex')}`; // keys of this run only
  let nodeA, nodeB, nginx, nginxURL;
  const pages = [];
  const problems = [];

  await t.test('two nodes joined through Redis, nginx in front', async () => {
    const bin = path.join(work, 'herald');
    await promisify(execFile)('go', ['build', '-o', bin, './cmd/herald'], { cwd: repo, timeout: BUILD_TIMEOUT, maxBuffer: 16 << 20 });
    const config = path.join(work, 'herald.yaml');
    // History, so that a client that moves recovers what it missed.
    await writeFile(config, 'namespaces:\n  - name: chat\n    history_size: 1000\n    history_ttl: 10m\n');
    const args = ['--config', config, '--broker', 'redis', '--redis-url', redisURL, '--broker-prefix', prefix,
      '--drain-window', DRAIN_WINDOW, '--shutdown-timeout', '5s'];
    nodeA = await startHerald(bin, 'A', args, { HERALD_API_KEY: apiKey });
    nodeB = await startHerald(bin, 'B', args, { HERALD_API_KEY: apiKey });

    const np = path.join(work, 'nginx');
    for (const d of ['tmp/body', 'tmp/proxy', 'tmp/fastcgi', 'tmp/uwsgi', 'tmp/scgi']) await mkdir(path.join(np, d), { recursive: true });
    const port = await freePort();
    await writeFile(path.join(np, 'nginx.conf'), nginxConf(np, port, [nodeA.addr, nodeB.addr]));
    // Its own prefix, config, pid file and logs; in the foreground, so that
    // it is this test's child and stops by its PID.
    nginx = child(nginxPath, ['-p', np, '-e', path.join(np, 'error.log'), '-c', path.join(np, 'nginx.conf'), '-g', 'daemon off;'], {
      stdio: ['ignore', 'inherit', 'inherit'],
    });
    nginxURL = `http://127.0.0.1:${port}`;
    await waitUntil('nginx to answer /readyz', async () => {
      if (nginx.exitCode !== null) throw new Error(`nginx exited (${nginx.exitCode}): ${await readFile(path.join(np, 'error.log'), 'utf8').catch(() => '')}`);
      return fetch(`${nginxURL}/readyz`, { signal: AbortSignal.timeout(2000) }).then((r) => r.ok, () => false);
    }, START_TIMEOUT);
    assert.equal((await fetch(`${nginxURL}/metrics`)).status, 404, '/metrics is kept off the proxy');
  });

  await t.test(`${PAGES} pages join chat:lobby through nginx`, async () => {
    browser = await chromium.launch({
      executablePath: chromiumPath,
      headless: true,
      timeout: 60_000,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    for (let i = 0; i < PAGES; i++) {
      const context = await browser.newContext();
      const page = await context.newPage();
      page.setDefaultTimeout(UI_TIMEOUT);
      page.on('pageerror', (err) => problems.push(`page ${i}: ${err.message}`));
      const resp = await page.goto(`${nginxURL}/`);
      assert.equal(resp.status(), 200);
      await page.fill('#name', `p${i}`);
      await page.click('#join');
      await page.waitForSelector('#status[data-state="connected"]');
      await page.locator('#messages li.notice', { hasText: 'You joined chat:lobby as' }).waitFor();
      pages.push(page);
    }
    // least_conn spreads the pages: both nodes have some.
    const [a, b] = [await connections(nodeA), await connections(nodeB)];
    t.diagnostic(`before the drain: A has ${a} connections, B has ${b}`);
    assert.equal(a + b, PAGES);
    assert.ok(a > 0 && b > 0, `pages on both nodes (A ${a}, B ${b})`);
    nodeA.before = a;
  });

  let ssePage;
  await t.test('an EventSource receives chat:lobby over SSE through nginx', async () => {
    const context = await browser.newContext();
    ssePage = await context.newPage();
    ssePage.setDefaultTimeout(UI_TIMEOUT);
    ssePage.on('pageerror', (err) => problems.push(`sse page: ${err.message}`));
    await ssePage.goto(`${nginxURL}/`);
    await ssePage.evaluate(() => {
      window.sse = { texts: [], subscribed: [] };
      const es = new EventSource('/sse?channel=chat:lobby');
      es.onmessage = (e) => window.sse.texts.push(JSON.parse(e.data).data.text);
      es.addEventListener('subscribed', (e) => window.sse.subscribed.push(JSON.parse(e.data)));
    });
    await ssePage.waitForFunction(() => window.sse.subscribed.length === 1);
    await waitUntil('the stream counted', async () => (await connections(nodeA)) + (await connections(nodeB)) === PAGES + 1);
  });

  await t.test('node A drains; every page receives every message, once, in order', async () => {
    let n = 0;
    let publishing = true;
    const published = [];
    // The backend: publishes every 50 ms to node B's HTTP API until told to stop.
    const publisher = (async () => {
      while (publishing) {
        const text = `m-${++n}`;
        const resp = await fetch(`http://${nodeB.addr}/api/v1/publish`, {
          method: 'POST',
          headers: { Authorization: `Bearer ${apiKey}`, 'Content-Type': 'application/json' },
          body: JSON.stringify({ channel: 'chat:lobby', data: { name: 'backend', text } }),
          signal: AbortSignal.timeout(5000),
        });
        assert.equal(resp.status, 200, `publish ${text}: ${await resp.text()}`);
        published.push(text);
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    try {
      await new Promise((r) => setTimeout(r, 500));
      const start = Date.now();
      nodeA.proc.kill('SIGTERM');
      const exit = await waitExit(nodeA.proc, 'node A');
      const drained = Date.now() - start;
      assert.deepEqual(exit, { code: 0, signal: null }, `node A's exit; logs:\n${nodeA.logs.join('\n')}`);
      await waitUntil(`all ${PAGES} pages and the stream on node B`, async () => (await connections(nodeB)) === PAGES + 1);
      t.diagnostic(`node A drained and exited in ${drained} ms; all pages on B ${Date.now() - start} ms after SIGTERM`);
      await new Promise((r) => setTimeout(r, 500)); // some more, after the move
    } finally {
      publishing = false;
      await publisher;
    }
    assert.ok(published.length > 20, `published ${published.length}`);
    const last = published.at(-1);
    let moved = 0;
    for (const [i, page] of pages.entries()) {
      await page.locator('#messages li.message .text', { hasText: new RegExp(`^${last}$`) }).waitFor();
      const texts = await page.locator('#messages li.message .text').allTextContents();
      assert.deepEqual(texts, published, `page ${i} shows every message exactly once, in order`);
      const notices = await page.locator('#messages li.notice').allTextContents();
      if (notices.some((s) => s.startsWith('Connection lost'))) {
        moved++;
        assert.ok(notices.some((s) => s.startsWith('Reconnected. Nothing was missed.')), `page ${i} recovered: ${notices.join(' | ')}`);
      }
    }
    assert.equal(moved, nodeA.before, 'the pages of node A, and only those, moved');
    // The stream, wherever it was, has every message once, in order: a
    // stream cut by the drain came back through nginx with Last-Event-ID.
    await ssePage.waitForFunction((last) => window.sse.texts.includes(last), last);
    assert.deepEqual(await ssePage.evaluate(() => window.sse.texts), published, 'the SSE stream got every message once, in order');
    const subscribed = await ssePage.evaluate(() => window.sse.subscribed);
    t.diagnostic(`SSE: subscribed ${subscribed.length} time(s): ${JSON.stringify(subscribed)}`);
    assert.ok(subscribed.slice(1).every((e) => e.recovered === true), 'every resubscription recovered');
    // nginx passed no 503 on: a handshake that reached the draining node went on to B.
    const access = await readFile(path.join(work, 'nginx', 'access.log'), 'utf8');
    const upgrades = access.split('\n').filter((l) => l.includes('GET /ws '));
    t.diagnostic(`nginx: ${upgrades.length} WebSocket requests logged (an upgraded one is logged when it closes), statuses ${[...new Set(upgrades.map((l) => l.split('" ')[1]?.split(' ')[0]))].join(', ')}`);
    assert.deepEqual(upgrades.filter((l) => !/" 101 /.test(l)), [], 'every handshake through nginx got 101');
    assert.deepEqual(problems, []);
  });

  await t.test('nginx stops by its PID', async () => {
    nginx.kill('SIGQUIT'); // graceful: finish what is open, then exit
    for (const p of [...pages, ssePage]) await p?.context().close();
    const exit = await waitExit(nginx, 'nginx');
    assert.equal(exit.code, 0, `nginx exit ${JSON.stringify(exit)}`);
    nodeB.proc.kill('SIGTERM');
    assert.equal((await waitExit(nodeB.proc, 'node B')).code, 0);
  });
});
