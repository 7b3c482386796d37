// Real-browser test of examples/teamchat, the example whose backend is in
// the loop: builds it, runs it on a free loopback port, and has two people
// (two browser contexts, so two cookie jars) log in, see each other online
// (webhooks), chat both ways (the publish hook stores each message and
// publishes its stored form), get the backend's refusal of an empty and a
// too-long message, page back through the store by RPC ("load older"), and
// see each other go offline once the grace has passed.
//
// Chromium is the system one (/usr/bin/chromium, or $CHROMIUM_PATH): this
// test never downloads a browser. Run it with `npm test` in this folder, or
// alone with `node --test teamchat.test.mjs`.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..', '..');
const chromiumPath = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const screenshot = path.join(repo, 'artifacts', 'teamchat.png');

// Bounds, so that a hang fails the test instead of holding CI.
const BUILD_TIMEOUT = 300_000;
const START_TIMEOUT = 30_000;
const STOP_TIMEOUT = 20_000;
const UI_TIMEOUT = 20_000;
// The example's grace (its -grace flag): how long a user stays online after
// their last tab closed. Short, so that the test need not wait 5s.
const GRACE_MS = 1000;

const work = await mkdtemp(path.join(tmpdir(), 'herald-teamchat-'));
let browser;
let server;

after(async () => {
  await browser?.close().catch(() => {});
  server?.proc.kill('SIGKILL');
  await rm(work, { recursive: true, force: true });
});

/** Builds examples/teamchat and starts it; resolves once it logs its address. */
async function startExample() {
  const bin = path.join(work, 'teamchat');
  await promisify(execFile)('go', ['build', '-o', bin, './examples/teamchat'], {
    cwd: repo,
    timeout: BUILD_TIMEOUT,
    maxBuffer: 16 << 20,
  });
  const proc = spawn(bin, ['-addr', '127.0.0.1:0', '-grace', `${GRACE_MS}ms`], { stdio: ['ignore', 'inherit', 'pipe'] });
  const s = { proc, logs: [] };
  s.exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error(`teamchat did not log "listening" within ${START_TIMEOUT} ms`)), START_TIMEOUT);
    function fail(err) {
      clearTimeout(timer);
      proc.kill('SIGKILL');
      reject(new Error(`${err.message}\nlogs:\n${s.logs.join('\n')}`));
    }
    proc.once('error', fail);
    proc.once('exit', (code, signal) => fail(new Error(`teamchat exited early (code ${code}, signal ${signal})`)));
    readline.createInterface({ input: proc.stderr }).on('line', (line) => {
      s.logs.push(line);
      const m = line.match(/listening on http:\/\/(\S+)/);
      if (m) {
        clearTimeout(timer);
        s.addr = m[1];
        resolve(s);
      }
    });
  });
}

/**
 * Opens the page in a browser context of its own (its own cookies, like
 * another person).
 */
async function openPage(url, problems) {
  const context = await browser.newContext({ viewport: { width: 900, height: 640 } });
  const page = await context.newPage();
  page.setDefaultTimeout(UI_TIMEOUT);
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error') problems.push(`console error: ${msg.text()}`);
  });
  const resp = await page.goto(url);
  assert.equal(resp.status(), 200);
  return page;
}

/** Records in page.rpcs the rpc commands the page sends. */
function recordRPCs(page) {
  page.rpcs = [];
  page.on('websocket', (ws) => ws.on('framesent', ({ payload }) => {
    const cmd = typeof payload === 'string' ? JSON.parse(payload) : null;
    if (cmd?.cmd === 'rpc') page.rpcs.push(cmd);
  }));
}

async function login(page, name) {
  await page.waitForSelector('#login-form:not([hidden])');
  await page.fill('#name', name);
  await page.click('#login');
  await page.waitForSelector('#status[data-state="connected"]');
  assert.equal(await page.textContent('#me'), name);
  assert.equal(await page.locator('#login-form').isHidden(), true, 'the login form is gone');
}

/** Sends text and waits until the backend accepted it (the input clears). */
async function say(page, text) {
  await page.fill('#text', text);
  await page.click('#send');
  await page.waitForFunction(() => document.querySelector('#text').value === '');
}

/** Waits for the message with exactly this text; returns its author. */
async function receive(page, text) {
  const msg = page.locator('#messages li.message').filter({ has: page.locator('.text', { hasText: text }) });
  await msg.waitFor();
  assert.equal(await msg.count(), 1, `one message "${text}"`);
  assert.equal(await msg.locator('.text').textContent(), text);
  return msg.locator('.user').textContent();
}

/** Waits until the page's "who's around" list is exactly names. */
async function online(page, names) {
  await page.waitForFunction(
    (want) => JSON.stringify([...document.querySelectorAll('#online li')].map((li) => li.textContent)) === want,
    JSON.stringify(names),
  );
}

test('two people use the team chat, its backend in the loop', { timeout: 240_000 }, async (t) => {
  let alice, bob;
  const problems = [];

  await t.test('build and start the example, launch Chromium', async () => {
    server = await startExample();
    browser = await chromium.launch({
      executablePath: chromiumPath,
      headless: true,
      timeout: 60_000,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  });

  await t.test('both log in and see each other online', async () => {
    const url = `http://${server.addr}/`;
    alice = await openPage(url, problems);
    await login(alice, 'alice');
    await online(alice, ['alice']);
    bob = await openPage(url, problems);
    await login(bob, 'bob');
    await online(bob, ['alice', 'bob']);
    await online(alice, ['alice', 'bob']);
    // The session cookie is HttpOnly: the page's scripts cannot read it.
    assert.equal(await alice.evaluate(() => document.cookie), '');
    assert.deepEqual(problems, [], 'no page or console errors');
  });

  await t.test('messages flow both ways, in the stored form', async () => {
    const hello = 'Hello Bob! <b>not bold</b>';
    await say(alice, hello);
    assert.equal(await receive(bob, hello), 'alice');
    assert.equal(await receive(alice, hello), 'alice', 'the sender sees its message too');
    assert.equal(await bob.locator('#messages b').count(), 0, 'no HTML from message text');
    await say(bob, '  Hi Alice  ');
    assert.equal(await receive(alice, 'Hi Alice'), 'bob', 'the backend trimmed it');
    // The stored form carries the store's id.
    const ids = await alice.$$eval('#messages li.message', (lis) => lis.map((li) => Number(li.dataset.id)));
    assert.deepEqual(ids, [1, 2]);
    await mkdir(path.dirname(screenshot), { recursive: true });
    await bob.screenshot({ path: screenshot });
  });

  await t.test('the backend refuses an empty and a too-long message', async () => {
    for (const [text, why] of [['   ', /empty/], ['x'.repeat(501), /501 characters; at most 500/]]) {
      await alice.fill('#text', text);
      await alice.click('#send');
      await alice.waitForSelector('#error[data-code="bad_message"]');
      assert.match(await alice.textContent('#error'), why);
      assert.equal(await alice.inputValue('#text'), text, 'a refused message stays in the input');
      await alice.evaluate(() => delete document.querySelector('#error').dataset.code);
    }
    assert.equal(await bob.locator('#messages li.message').count(), 2, 'nothing refused was published');
  });

  await t.test('a page loads the latest 20 messages by RPC, and older ones on demand', async () => {
    for (let i = 1; i <= 25; i++) await say(alice, `n${i}`);
    await receive(bob, 'n25');
    // A third tab of bob's: same cookie, a fresh page.
    const tab = await bob.context().newPage();
    tab.setDefaultTimeout(UI_TIMEOUT);
    tab.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
    recordRPCs(tab);
    await tab.goto(`http://${server.addr}/`);
    await tab.waitForSelector('#status[data-state="connected"]');
    await tab.locator('#messages li.message').nth(19).waitFor();
    await tab.waitForSelector('#older:not([hidden])');
    const texts = () => tab.$$eval('#messages li.message .text', (els) => els.map((e) => e.textContent));
    assert.deepEqual(await texts(), Array.from({ length: 20 }, (_, i) => `n${i + 6}`));

    await tab.click('#older');
    await tab.waitForSelector('#older[hidden]', { state: 'attached' });
    assert.deepEqual(await texts(), ['Hello Bob! <b>not bold</b>', 'Hi Alice', ...Array.from({ length: 25 }, (_, i) => `n${i + 1}`)]);
    assert.deepEqual(
      tab.rpcs.filter((c) => c.method === 'messages.before').map((c) => c.data),
      [{ before: 0, limit: 20 }, { before: 8, limit: 20 }], // ids: 1 and 2, then n1..n25 = 3..27
      'the page paged through the store by RPC',
    );
    await tab.close();
    assert.deepEqual(problems, [], 'no page or console errors');
  });

  await t.test('when bob leaves, alice sees him go offline after the grace', async () => {
    await online(alice, ['alice', 'bob']); // bob's closed tab was not his last
    const closed = Date.now();
    await bob.context().close();
    await online(alice, ['alice']);
    assert.ok(Date.now() - closed >= GRACE_MS * 0.8, `offline after ${Date.now() - closed} ms; the grace is ${GRACE_MS} ms`);
    assert.deepEqual(problems, [], 'no page or console errors');
  });

  await t.test('logging out closes the connection and shows the login form, also after a reload', async () => {
    await alice.click('#logout');
    await alice.waitForSelector('#login-form:not([hidden])');
    assert.equal(await alice.getAttribute('#status', 'data-state'), 'disconnected');
    await alice.reload();
    await alice.waitForSelector('#login-form:not([hidden])');
    assert.equal(await alice.locator('#chat').isHidden(), true);
    assert.deepEqual(problems, [], 'no page or console errors');
  });

  await t.test('SIGTERM stops the example cleanly', async () => {
    server.proc.kill('SIGTERM');
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`teamchat did not stop within ${STOP_TIMEOUT} ms`)), STOP_TIMEOUT);
    });
    const { code } = await Promise.race([server.exited, timeout]).finally(() => clearTimeout(timer));
    assert.equal(code, 0, `exit code; logs:\n${server.logs.join('\n')}`);
    server = undefined;
  });
});
