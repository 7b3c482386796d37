// pusher-js's browser build in headless Chromium (the system one, never a
// download), on a page served by the test's backend: public, private and
// presence channels, and a client event between two pages.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { chromium } from 'playwright-core';
import nacl from 'tweetnacl';
import { base, op } from './common.mjs';

const MASTER = 'compat-encryption-master-key-32b'; // compat_test.go's encryptionMasterKey

let context, dir;
before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'herald-pusher-chromium-'));
  context = await chromium.launchPersistentContext(dir, {
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox'],
  });
});
after(async () => {
  await context?.close().catch(() => {});
  await rm(dir, { recursive: true, force: true });
});

// page opens the test page and a pusher-js client in it as user.
async function page(user) {
  const p = await context.newPage();
  await p.goto(base + '/');
  await p.evaluate((user) => {
    window.got = [];
    window.pusher = new Pusher('compat-key', {
      cluster: 'mt1', wsHost: location.hostname, wsPort: Number(location.port), forceTLS: false,
      enabledTransports: ['ws'], disableStats: true,
      channelAuthorization: { endpoint: '/broadcasting/auth', transport: 'ajax', params: { user } },
    });
    window.sub = (name, events) => new Promise((resolve, reject) => {
      const ch = window.pusher.subscribe(name);
      for (const e of events) ch.bind(e, (d, meta) => window.got.push({ channel: name, event: e, data: d, user_id: meta && meta.user_id }));
      ch.bind('pusher:subscription_succeeded', () => resolve(ch.members ? ch.members.count : null));
      ch.bind('pusher:subscription_error', (e) => reject(new Error(JSON.stringify(e))));
    });
  }, user);
  return p;
}

const events = (p) => p.evaluate(() => window.got);
const until = (p, fn) => p.waitForFunction(fn, null, { timeout: 15000 });

test('pusher-js in Chromium: public, private, presence, client events', async () => {
  const alice = await page('alice');
  await alice.evaluate(() => Promise.all([
    window.sub('news', ['headline']),
    window.sub('private-inbox', ['mail']),
    window.sub('presence-lobby', ['pusher:member_added', 'client-wave']),
  ]));
  await op('trigger', { channels: ['news', 'private-inbox'], event: 'headline', data: JSON.stringify({ n: 1 }) });
  await op('trigger', { channels: ['private-inbox'], event: 'mail', data: 'you have mail' });
  await until(alice, () => window.got.filter((g) => g.event === 'headline' || g.event === 'mail').length === 2);
  const got = await events(alice);
  assert.deepEqual(got.find((g) => g.event === 'headline').data, { n: 1 });
  assert.equal(got.find((g) => g.event === 'mail').data, 'you have mail');

  const bob = await page('bob');
  const count = await bob.evaluate(() => window.sub('presence-lobby', []));
  assert.equal(count, 2);
  await until(alice, () => window.got.some((g) => g.event === 'pusher:member_added'));
  assert.equal((await events(alice)).find((g) => g.event === 'pusher:member_added').data.id, 'bob');
  await bob.evaluate(() => window.pusher.channel('presence-lobby').trigger('client-wave', { hi: true }));
  await until(alice, () => window.got.some((g) => g.event === 'client-wave'));
  const wave = (await events(alice)).find((g) => g.event === 'client-wave');
  assert.deepEqual(wave.data, { hi: true });
  assert.equal(wave.user_id, 'bob');
});

// An encrypted channel end to end: the backend encrypts with the channel's
// key (as the Pusher server SDKs do), Herald relays the ciphertext it
// cannot read, and pusher-js's encryption build decrypts it in the page.
test('pusher-js in Chromium: private-encrypted channel, relayed untouched', async () => {
  const p = await context.newPage();
  await p.goto(base + '/encrypted.html');
  await p.evaluate(() => new Promise((resolve, reject) => {
    window.got = [];
    window.pusher = new Pusher('compat-key', {
      cluster: 'mt1', wsHost: location.hostname, wsPort: Number(location.port), forceTLS: false,
      enabledTransports: ['ws'], disableStats: true,
      channelAuthorization: { endpoint: '/broadcasting/auth', transport: 'ajax', params: { user: 'eve' } },
    });
    const ch = window.pusher.subscribe('private-encrypted-vault');
    ch.bind('secret', (d) => window.got.push(d));
    ch.bind('pusher:subscription_succeeded', resolve);
    ch.bind('pusher:subscription_error', (e) => reject(new Error(JSON.stringify(e))));
  }));
  const key = createHash('sha256').update('private-encrypted-vault' + MASTER).digest();
  const nonce = nacl.randomBytes(nacl.secretbox.nonceLength);
  const box = nacl.secretbox(Buffer.from(JSON.stringify({ code: 42 })), nonce, new Uint8Array(key));
  const data = JSON.stringify({ nonce: Buffer.from(nonce).toString('base64'), ciphertext: Buffer.from(box).toString('base64') });
  await op('trigger', { channels: ['private-encrypted-vault'], event: 'secret', data });
  await until(p, () => window.got.length === 1);
  assert.deepEqual(await events(p), [{ code: 42 }]);
});
