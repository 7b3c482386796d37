// Real-browser test of the demo chat page: builds the herald binary, runs
// `herald serve` on a free loopback port, and has two Chromium pages, loaded
// from that server, chat with each other over the real WebSocket endpoint
// (the page runs on @heraldhq/client, clients/js). A third page joins later:
// it sees the messages sent before (history) and everyone sees who is in the
// room (presence), and it keeps a draft typed while a slow send (held back by
// a WebSocket route) is in flight; when it leaves, the others see it go. Then
// the pages move to another channel.
// Then it restarts the server on the same port and checks that both pages
// reconnect and chat again.
//
// Chromium is the system one (/usr/bin/chromium, or $CHROMIUM_PATH): this
// test never downloads a browser. Run it with `npm test` in this folder.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { mkdtemp, mkdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..', '..');
const chromiumPath = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const screenshot = path.join(repo, 'artifacts', 'demo.png');
const newcomerShot = path.join(repo, 'artifacts', 'demo-newcomer.png');

// Bounds, so that a hang fails the test instead of holding CI.
const BUILD_TIMEOUT = 300_000;
const START_TIMEOUT = 30_000;
const STOP_TIMEOUT = 20_000;
const UI_TIMEOUT = 20_000;

const work = await mkdtemp(path.join(tmpdir(), 'herald-e2e-'));
const servers = new Set();
let browser;

// Whatever happens, stop the browser and every server, and remove the build.
after(async () => {
  await browser?.close().catch(() => {});
  for (const s of servers) s.proc.kill('SIGKILL');
  await rm(work, { recursive: true, force: true });
});

async function buildHerald() {
  const bin = path.join(work, 'herald');
  await promisify(execFile)('go', ['build', '-ldflags', '-X main.version=e2e', '-o', bin, './cmd/herald'], {
    cwd: repo,
    timeout: BUILD_TIMEOUT,
    maxBuffer: 16 << 20,
  });
  return bin;
}

/**
 * Starts `herald serve` and resolves once it logs its address. The server's
 * environment has no HERALD_ variables, so only the flags given here apply.
 */
function startHerald(bin, addr) {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('HERALD_')));
  // drain_window off: on SIGTERM every page is told 1001 at once, as this
  // test expects. (With the default drain, pages told 1012 early in the
  // window would reconnect to this same draining server and be refused
  // with 503; the drain is tested in cmd/herald and admin.test.mjs.)
  const proc = spawn(bin, ['serve', '--addr', addr, '--log-format', 'json', '--shutdown-timeout', '5s', '--drain-window', 'off'], {
    env,
    stdio: ['ignore', 'inherit', 'pipe'],
  });
  const server = { proc, logs: [], exited: null };
  servers.add(server);
  server.exited = new Promise((resolve) => proc.once('exit', (code, signal) => {
    servers.delete(server);
    resolve({ code, signal });
  }));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error(`herald did not log "listening" within ${START_TIMEOUT} ms`)), START_TIMEOUT);
    function fail(err) {
      clearTimeout(timer);
      proc.kill('SIGKILL');
      reject(new Error(`${err.message}\nherald logs:\n${server.logs.join('\n')}`));
    }
    proc.once('error', fail);
    proc.once('exit', (code, signal) => fail(new Error(`herald exited early (code ${code}, signal ${signal})`)));
    readline.createInterface({ input: proc.stderr }).on('line', (line) => {
      server.logs.push(line);
      let entry;
      try {
        entry = JSON.parse(line);
      } catch {
        return;
      }
      if (entry.msg === 'listening') {
        clearTimeout(timer);
        server.addr = entry.addr;
        resolve(server);
      }
    });
  });
}

/** Sends SIGTERM and waits for the server to exit; returns its exit status. */
async function stopHerald(server) {
  server.proc.kill('SIGTERM');
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`herald did not stop within ${STOP_TIMEOUT} ms`)), STOP_TIMEOUT);
  });
  try {
    return await Promise.race([server.exited, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Opens a page in its own browser context: separate storage, like another
 * person. page.scripts lists the paths of the scripts it loaded, with status.
 */
async function openPage(url, problems) {
  const context = await browser.newContext({ viewport: { width: 900, height: 640 } });
  const page = await context.newPage();
  page.setDefaultTimeout(UI_TIMEOUT);
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error') problems.push(`console error: ${msg.text()}`);
  });
  page.scripts = [];
  page.on('response', (resp) => {
    if (resp.request().resourceType() === 'script') page.scripts.push(`${new URL(resp.url()).pathname} ${resp.status()}`);
  });
  const resp = await page.goto(url);
  assert.equal(resp.status(), 200);
  await page.waitForLoadState('load');
  return page;
}

async function join(page, name) {
  await page.fill('#name', name);
  assert.equal(await page.inputValue('#channel'), 'chat:lobby', 'default channel');
  await page.click('#join');
  await page.waitForSelector('#status[data-state="connected"]');
}

async function say(page, text) {
  await page.fill('#text', text);
  await page.click('#send');
  // The input clears once the server accepted the publish.
  await page.waitForFunction(() => document.querySelector('#text').value === '');
}

/** Joins another channel from a page that has joined one, and waits until it is subscribed. */
async function switchTo(page, channel) {
  await page.fill('#channel', channel);
  await page.click('#join');
  await page.locator('#messages li.notice', { hasText: `You joined ${channel} as` }).waitFor();
  await page.waitForSelector('#status[data-state="connected"]');
  assert.equal(await page.textContent('#room-title'), `#${channel}`);
}

/** Waits until the page lists exactly these people as in the room. */
async function people(page, want) {
  want = JSON.stringify([...want].sort());
  const listed = () => [...document.querySelectorAll('#people li.person')].map((li) => li.firstChild.textContent).sort();
  try {
    await page.waitForFunction(([want]) => {
      const got = [...document.querySelectorAll('#people li.person')].map((li) => li.firstChild.textContent).sort();
      return JSON.stringify(got) === want;
    }, [want]);
  } catch (err) {
    throw new Error(`people in the room: ${JSON.stringify(await page.evaluate(listed))}, want ${want} (${err.message.split('\n')[0]})`);
  }
}

/** Waits for a message with exactly this text and returns its sender's name. */
async function receive(page, text) {
  const msg = page.locator('#messages li.message').filter({ has: page.locator('.text', { hasText: text }) });
  await msg.waitFor();
  assert.equal(await msg.count(), 1, `one message "${text}"`);
  assert.equal(await msg.locator('.text').textContent(), text);
  return msg.locator('.name').textContent();
}

test('two browsers chat through herald serve', { timeout: 240_000 }, async (t) => {
  let bin, server, alice, bob;
  const problems = [];

  await t.test('build and start the server', async () => {
    bin = await buildHerald();
    const { stdout } = await promisify(execFile)(bin, ['version'], { timeout: 10_000 });
    assert.match(stdout, /^herald e2e (commit [0-9a-f]+(-dirty)? )?go\S+ \S+\/\S+\n$/, 'version set with -ldflags');
    server = await startHerald(bin, '127.0.0.1:0');
    assert.match(server.addr, /^127\.0\.0\.1:\d+$/);
  });

  await t.test('launch Chromium', async () => {
    browser = await chromium.launch({
      executablePath: chromiumPath,
      headless: true,
      timeout: 60_000,
      // Playwright gives the browser a fresh temporary profile (user data
      // dir) and deletes it on close.
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

  await t.test('both pages join chat:lobby', async () => {
    const url = `http://${server.addr}/`;
    alice = await openPage(url, problems);
    bob = await openPage(url, problems);
    // The page runs on @heraldhq/client, clients/js/index.js as the server
    // serves it (package jsclient), and on nothing else.
    assert.deepEqual(alice.scripts.sort(), ['/app.js 200', '/herald-client.js 200']);
    assert.equal(await alice.getAttribute('#status', 'data-state'), 'idle');
    assert.ok(await alice.isDisabled('#send'), 'send is disabled before joining');

    // An invalid channel name is refused by the page itself, before any connection.
    await alice.fill('#name', 'Alice');
    await alice.fill('#channel', 'chat lobby');
    await alice.click('#join');
    assert.equal(await alice.$eval('#channel', (e) => e.validity.customError), true, 'invalid channel flagged');
    assert.equal(await alice.getAttribute('#status', 'data-state'), 'idle', 'no connection for an invalid channel');
    await alice.fill('#channel', 'chat:lobby');

    await join(alice, 'Alice');
    await join(bob, 'Bob');
  });

  await t.test('a message typed in one page appears in the other', async () => {
    // Markup in a message must show as text, never become HTML.
    const hello = 'Hello Bob! <b>not bold</b> <img src=x onerror="window.pwned=1">';
    await say(alice, hello);
    assert.equal(await receive(bob, hello), 'Alice');
    assert.equal(await receive(alice, hello), 'Alice', 'the sender sees its message too');
    assert.equal(await bob.locator('#messages b, #messages img').count(), 0, 'no HTML from message text');
    assert.equal(await bob.evaluate(() => window.pwned), undefined);

    await say(bob, 'Hi Alice — ça va ?');
    assert.equal(await receive(alice, 'Hi Alice — ça va ?'), 'Bob');
    assert.ok(await alice.locator('#messages li.message.mine').count() >= 1, 'own messages are marked');

    await mkdir(path.dirname(screenshot), { recursive: true });
    await bob.screenshot({ path: screenshot });
    assert.deepEqual(problems, [], 'no page or console errors');
  });

  // Carol's page sends through a route that can hold her publishes to
  // chat:lobby back for SLOW_SEND ms: a slow network, on her page only.
  const SLOW_SEND = 1500;
  let carol;
  let slow = false;

  await t.test('a newcomer sees the recent messages, and everyone sees who is here', async () => {
    carol = await openPage(`http://${server.addr}/`, problems);
    await carol.routeWebSocket(/\/ws$/, (ws) => {
      const upstream = ws.connectToServer();
      ws.onMessage((m) => {
        if (slow && typeof m === 'string' && m.includes('"cmd":"publish"') && m.includes('"channel":"chat:lobby"')) {
          setTimeout(() => upstream.send(m), SLOW_SEND);
        } else {
          upstream.send(m);
        }
      });
    });
    await join(carol, 'Carol');
    // What Alice and Bob said before Carol came, in order, each once, above
    // her "You joined" line.
    await carol.locator('#messages li.history-mark', { hasText: '2 earlier messages' }).waitFor();
    assert.deepEqual(await carol.locator('#messages li.message .text').allTextContents(), [
      'Hello Bob! <b>not bold</b> <img src=x onerror="window.pwned=1">',
      'Hi Alice — ça va ?',
    ]);
    assert.deepEqual(await carol.locator('#messages li.message .name').allTextContents(), ['Alice', 'Bob']);
    assert.equal(await carol.locator('#messages li.message.history').count(), 2, 'both marked as history');
    assert.match(await carol.locator('#messages li.message.history + li.notice').textContent(), /^You joined chat:lobby as Carol\./);
    assert.equal(await carol.locator('#messages b, #messages img').count(), 0, 'no HTML from history either');

    for (const page of [alice, bob, carol]) await people(page, ['Alice', 'Bob', 'Carol']);
    assert.equal(await carol.textContent('#people-count'), '3 here:');
    assert.equal(await carol.locator('#people li.person', { hasText: '(you)' }).evaluate((li) => li.firstChild.textContent), 'Carol');
    await carol.screenshot({ path: newcomerShot });
    assert.deepEqual(problems, [], 'no page or console errors');
  });

  await t.test('a draft typed while a send is on its way is kept', async () => {
    slow = true;
    await carol.fill('#text', 'Slow hello');
    await carol.click('#send');
    await carol.fill('#text', 'my next thought');
    // Still in flight: the route holds the publish for SLOW_SEND ms.
    assert.ok(await carol.isDisabled('#send'), 'send is disabled while the publish is in flight');
    assert.equal(await bob.locator('#messages li.message', { hasText: 'Slow hello' }).count(), 0, 'not delivered yet');
    assert.equal(await receive(bob, 'Slow hello'), 'Carol');
    assert.equal(await receive(carol, 'Slow hello'), 'Carol');
    await carol.waitForSelector('#send:enabled'); // the publish's reply came
    slow = false;
    assert.equal(await carol.inputValue('#text'), 'my next thought', 'the draft typed meanwhile is kept');
    await say(carol, 'my next thought'); // and a send with no draft behind it clears the input
    assert.equal(await receive(alice, 'my next thought'), 'Carol');
    assert.deepEqual(problems, [], 'no page or console errors');
  });

  await t.test('when a page leaves, the others see it go', async () => {
    await carol.context().close();
    for (const page of [alice, bob]) await people(page, ['Alice', 'Bob']);
    assert.equal(await alice.textContent('#people-count'), '2 here:');
  });

  await t.test('switching channels: a page sees the new channel only', async () => {
    await switchTo(alice, 'chat:side');
    assert.equal(await alice.locator('#messages li.message').count(), 0, 'the old channel\'s messages are cleared');
    await people(alice, ['Alice']);
    await people(bob, ['Bob']); // Alice left chat:lobby
    // Alice's unsubscribe from chat:lobby is done: what Bob says there now
    // must not reach her.
    await say(bob, 'Lobby only');
    assert.equal(await receive(bob, 'Lobby only'), 'Bob');
    await switchTo(bob, 'chat:side');
    await say(bob, 'Over here');
    assert.equal(await receive(alice, 'Over here'), 'Bob');
    assert.equal(await alice.locator('#messages li.message', { hasText: 'Lobby only' }).count(), 0);
    assert.deepEqual(problems, [], 'no page or console errors');
  });

  await t.test('SIGTERM: the server stops cleanly and pages start reconnecting', async () => {
    const { code, signal } = await stopHerald(server);
    assert.equal(signal, null);
    assert.equal(code, 0, `herald exit code; logs:\n${server.logs.join('\n')}`);
    assert.ok(server.logs.some((l) => l.includes('"msg":"stopped"')), 'logged "stopped"');
    for (const page of [alice, bob]) {
      await page.waitForSelector('#status[data-state="reconnecting"]');
      assert.match(await page.textContent('#status'), /restarting/, 'close 1001 is explained');
    }
  });

  await t.test('after a restart on the same address, pages reconnect and chat again', async () => {
    server = await startHerald(bin, server.addr);
    await alice.waitForSelector('#status[data-state="connected"]');
    await bob.waitForSelector('#status[data-state="connected"]');
    await say(bob, 'Back again');
    assert.equal(await receive(alice, 'Back again'), 'Bob');
    assert.equal(await alice.textContent('#room-title'), '#chat:side', 'still in the channel joined before the restart');
    // Attempts made while the server was down are logged by Chromium itself;
    // anything else (a page error, say) is a problem.
    const refused = /^console error: WebSocket connection to '.*' failed: .*ERR_CONNECTION_REFUSED/;
    assert.deepEqual(problems.filter((p) => !refused.test(p)), [], 'no page or console errors');
    const { code } = await stopHerald(server);
    assert.equal(code, 0);
  });

  await browser.close();
  browser = undefined;
});
