// Real-browser test of Server-Sent Events: Chromium's own EventSource,
// on a page loaded from `herald serve`, receives a channel's publications
// over /sse with a token in the query; the server ends the stream
// (disconnect_user over the HTTP API), publications go on meanwhile, and
// the browser's own reconnect — which sends Last-Event-ID — recovers them,
// in order, told recovered:true.
//
// Chromium is the system one (/usr/bin/chromium, or $CHROMIUM_PATH): this
// test never downloads a browser.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..', '..');
const chromiumPath = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const BUILD_TIMEOUT = 300_000;
const START_TIMEOUT = 30_000;
const UI_TIMEOUT = 20_000;
const SECRET = 'e2e-secret-of-at-least-thirty-two-bytes!';
const API_KEY = 'e2e-api-key-of-enough-length';

const work = await mkdtemp(path.join(tmpdir(), 'herald-e2e-sse-'));
let browser;
let proc;

after(async () => {
  await browser?.close().catch(() => {});
  proc?.kill('SIGKILL');
  await rm(work, { recursive: true, force: true });
});

function hs256(claims) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${body}.${createHmac('sha256', SECRET).update(body).digest('base64url')}`;
}

async function startHerald() {
  const bin = path.join(work, 'herald');
  await promisify(execFile)('go', ['build', '-o', bin, './cmd/herald'], { cwd: repo, timeout: BUILD_TIMEOUT, maxBuffer: 16 << 20 });
  const config = path.join(work, 'herald.yaml');
  await writeFile(config, 'namespaces:\n  - name: ""\n  - name: hist\n    history_size: 100\n    history_ttl: 10m\n');
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('HERALD_')));
  Object.assign(env, { HERALD_JWT_SECRET: SECRET, HERALD_API_KEY: API_KEY });
  proc = spawn(bin, ['serve', '--addr', '127.0.0.1:0', '--config', config, '--log-format', 'json', '--drain-window', 'off'], {
    env,
    stdio: ['ignore', 'inherit', 'pipe'],
  });
  const logs = [];
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`herald did not start:\n${logs.join('\n')}`)), START_TIMEOUT);
    readline.createInterface({ input: proc.stderr }).on('line', (line) => {
      logs.push(line);
      try {
        const entry = JSON.parse(line);
        if (entry.msg === 'listening') {
          clearTimeout(timer);
          resolve(`http://${entry.addr}`);
        }
      } catch {
        // not JSON: keep it for the error message
      }
    });
    proc.once('exit', (code) => reject(new Error(`herald exited (${code}):\n${logs.join('\n')}`)));
  });
}

async function api(base, route, body) {
  const resp = await fetch(`${base}/api/v1/${route}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  assert.equal(resp.status, 200, `${route}: ${await resp.text()}`);
}

test("Chromium's EventSource receives, and its own reconnect recovers via Last-Event-ID", async () => {
  const base = await startHerald();
  browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    // As the other tests: without the background-networking flags this
    // machine's closed network refuses Chromium's own connections.
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = await browser.newPage();
  await page.goto(base + '/');
  const token = hs256({ sub: 'alice', exp: Math.floor(Date.now() / 1000) + 3600 });
  await page.evaluate((token) => {
    window.got = [];
    const es = new EventSource(`/sse?channel=hist:e2e&token=${encodeURIComponent(token)}`);
    const keep = (type) => (e) => window.got.push({ type, data: e.data ? JSON.parse(e.data) : null, id: e.lastEventId });
    es.onmessage = keep('pub');
    es.addEventListener('subscribed', keep('subscribed'));
    es.addEventListener('close', keep('close'));
    window.es = es;
  }, token);
  const until = (what, pred) => page.waitForFunction(pred, null, { timeout: UI_TIMEOUT, polling: 50 }).catch(async (err) => {
    throw new Error(`${what}: ${err.message}; events: ${JSON.stringify(await page.evaluate(() => window.got).catch(() => null))}`);
  });
  await until('subscribed', () => window.got.some((e) => e.type === 'subscribed'));
  await api(base, 'publish', { channel: 'hist:e2e', data: { n: 1 } });
  await until('the first publication', () => window.got.some((e) => e.type === 'pub'));

  // The server ends the stream; two more are published while the browser waits to reconnect.
  await api(base, 'disconnect_user', { user: 'alice', code: 4000, reason: 'test' });
  await until('the close event', () => window.got.some((e) => e.type === 'close'));
  await api(base, 'publish', { channel: 'hist:e2e', data: { n: 2 } });
  await api(base, 'publish', { channel: 'hist:e2e', data: { n: 3 } });
  await until('the recovered publications', () => window.got.filter((e) => e.type === 'pub').length >= 3);

  const got = await page.evaluate(() => window.got);
  const subs = got.filter((e) => e.type === 'subscribed');
  assert.equal(subs.length, 2, JSON.stringify(got));
  assert.equal(subs[1].data.recovered, true, 'the reconnect recovered: ' + JSON.stringify(subs[1]));
  assert.deepEqual(
    got.filter((e) => e.type === 'pub').map((e) => [e.data.offset, e.data.data.n]),
    [[1, 1], [2, 2], [3, 3]],
  );
  assert.match(got.at(-1).id, /^3:/, 'the last id carries offset 3');
  assert.equal(await page.evaluate(() => window.es.readyState), 1, 'open again');
});
