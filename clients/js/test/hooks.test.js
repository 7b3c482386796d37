// The client against a real herald.Node with hooks: the hook test server
// (test/hookserver, built from this repository; its hooks are Go functions
// steered by connect data, rpc methods and a control API) for rpc,
// connectData and server-side subscriptions, and `herald serve` without
// hooks for rpc's not_enabled.

import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';

import { Herald, HeraldError } from '../index.js';
import { startHerald, startHookServer, cleanup } from './herald-server.js';
import { Inbox, recordStates, uniq, waitFor, within } from './util.js';

let server; // the hook server, shared: every test uses channels and users of its own
const clients = new Set();

before(async () => {
  server = await startHookServer();
});

afterEach(() => {
  for (const c of clients) c.disconnect();
  clients.clear();
});

after(cleanup);

function newClient(options = {}, url = server.url) {
  const c = new Herald(url, { timeout: 5000, backoff: { min: 50, max: 500 }, ...options });
  clients.add(c);
  return c;
}

/** A client whose 'subscription' listener gives each server-side Subscription these inboxes. */
function withServerSubs(c) {
  const subs = { announced: new Inbox(), messages: new Inbox(), subscribed: new Inbox(), ended: new Inbox() };
  c.on('subscription', (sub, result) => {
    subs.announced.push([sub.channel, result]);
    sub.setHandlers({
      onMessage: (data, ctx) => subs.messages.push([ctx.channel, data, ctx.offset]),
      onSubscribed: (res) => subs.subscribed.push([sub.channel, res]),
      onUnsubscribed: (info) => subs.ended.push([sub.channel, info]),
    });
  });
  return subs;
}

test('rpc: the backend\'s answer, none, its own refusal codes, unavailable when it fails or is slow', async () => {
  const user = uniq('ada-');
  const c = newClient({ connectData: { user } });
  await within(5000, 'connect', c.connect());

  assert.deepEqual(await c.rpc('echo', { before: 42 }), { method: 'echo', user, data: { before: 42 } });
  assert.deepEqual(await c.rpc('echo'), { method: 'echo', user, data: null });
  assert.equal(await c.rpc('none', 1), undefined);
  await assert.rejects(c.rpc('refuse', { code: 'room_gone' }), (err) => err instanceof HeraldError && err.code === 'room_gone' && err.message === 'refused by the test backend');
  await assert.rejects(c.rpc('refuse', { code: 'permission_denied' }), { code: 'permission_denied' });
  await assert.rejects(c.rpc('nope'), { code: 'no_such_method' });
  await assert.rejects(c.rpc('fail'), { name: 'HeraldError', code: 'unavailable' });
  await assert.rejects(c.rpc('slow'), { name: 'HeraldError', code: 'unavailable' });
  // None of these ends the connection.
  assert.deepEqual(await c.rpc('echo', 'still here'), { method: 'echo', user, data: 'still here' });
  assert.equal(c.state, 'connected');
});

test('rpc: not_enabled from a server without an RPC hook (`herald serve` without hooks)', async (t) => {
  const plain = await startHerald();
  t.after(() => plain.stop());
  const c = newClient({}, plain.url);
  await within(5000, 'connect', c.connect());
  await assert.rejects(c.rpc('echo', 1), { name: 'HeraldError', code: 'not_enabled' });
  await c.ping();
});

test('connectData reaches the connect hook on every connect, and its answer the connected event', async () => {
  let n = 0;
  const user = uniq('bo-');
  const c = newClient({ connectData: async () => ({ user, n: ++n }) });
  const states = recordStates(c);
  await within(5000, 'connect', c.connect());
  assert.deepEqual(states.items.at(-1), { state: 'connected', clientId: c.clientId, data: { hello: user, data: { user, n: 1 } } });
  assert.deepEqual(await c.rpc('echo'), { method: 'echo', user, data: null }, 'the hook set the user');

  const from = states.items.length;
  c._socket.close();
  const again = await states.find((e) => e.state === 'connected', 10_000, 'connected again', from);
  assert.deepEqual(again.data, { hello: user, data: { user, n: 2 } });
});

test('connect hook: a refusal stops the client with the hook\'s code (4500, or 4501 for unauthorized); a failure is retried (1013)', async () => {
  const banned = newClient({ connectData: { refuse: 'banned' } });
  const bannedStates = recordStates(banned);
  await assert.rejects(within(5000, 'refused', banned.connect()), (err) => err instanceof HeraldError && err.code === 'banned');
  assert.deepEqual(bannedStates.items.at(-1), { state: 'disconnected', code: 4500, reason: bannedStates.items.at(-1).reason, reconnect: false });

  const stale = newClient({ connectData: { refuse: 'unauthorized' } });
  const staleStates = recordStates(stale);
  await assert.rejects(within(5000, 'refused', stale.connect()), { code: 'unauthorized' });
  assert.equal(staleStates.items.at(-1).code, 4501);
  assert.equal(staleStates.items.at(-1).reconnect, false);

  let n = 0;
  const user = uniq('cy-');
  const flaky = newClient({ connectData: () => (++n === 1 ? { fail: true } : { user }) });
  const states = recordStates(flaky);
  await within(10_000, 'connected after the failure', flaky.connect());
  const failed = states.items.find((e) => e.state === 'disconnected');
  assert.equal(failed.code, 1013, JSON.stringify(states.items));
  assert.equal(failed.reconnect, true);
  assert.equal(n, 2);
});

test('server-side subscriptions from the connect hook: announced, publications, recovered through a reconnect with connect subs', async () => {
  const user = uniq('di-');
  const news = uniq('hist:news-');
  const plain = uniq('lobby-');
  await server.control('grant', { user, channels: [news, plain] });
  // Records the frames the client sends, to see connect's subs.
  const sent = [];
  const Base = globalThis.WebSocket ?? (await import('ws')).WebSocket;
  class Recording extends Base {
    send(data) {
      sent.push(typeof data === 'string' ? JSON.parse(data) : data);
      super.send(data);
    }
  }
  const c = newClient({ connectData: { user }, WebSocket: Recording });
  const subs = withServerSubs(c);
  await within(5000, 'connect', c.connect());
  await subs.announced.count(2, 5000, 'two subscribe pushes');
  assert.deepEqual(subs.announced.items.map(([ch]) => ch).sort(), [news, plain].sort());
  const sub = c.getSubscription(news);
  assert.equal(sub.serverSide, true);
  assert.equal(sub.state, 'subscribed');
  assert.equal(typeof sub.epoch, 'string');

  for (const i of [1, 2, 3]) await server.control('publish', { channel: news, data: { i } });
  await server.control('publish', { channel: plain, data: 'live' });
  await subs.messages.count(4, 5000, 'the publications');
  assert.deepEqual(subs.messages.items.filter(([ch]) => ch === news).map(([, d, off]) => [d.i, off]), [[1, 1], [2, 2], [3, 3]]);
  assert.equal(sub.offset, 3);

  // Away while two more are published; connect() again names both in subs.
  c.disconnect();
  for (const i of [4, 5]) await server.control('publish', { channel: news, data: { i } });
  const before = sent.length;
  const subscribedBefore = subs.subscribed.items.length;
  await within(5000, 'reconnect', c.connect());
  await subs.messages.count(6, 5000, 'the recovered publications');
  assert.deepEqual(subs.messages.items.slice(4).map(([ch, d, off]) => [ch, d.i, off]), [[news, 4, 4], [news, 5, 5]]);
  const connect = sent.slice(before).find((f) => f.cmd === 'connect');
  assert.deepEqual(connect.subs, { [news]: { offset: 3, epoch: sub.epoch }, [plain]: { offset: 0, epoch: '' } });
  await c.ping();
  assert.deepEqual(sent.slice(before).filter((f) => f.cmd === 'subscribe'), [], 'no subscribe: the server made them again');
  const [, res] = await subs.subscribed.find(([ch]) => ch === news, 5000, 'news made again', subscribedBefore);
  assert.equal(res.recovered, true);
  assert.equal(subs.announced.items.length, 2, 'the same Subscriptions, not announced again');
  // Without history there is nothing to recover from: made again, as is.
  const [, plainRes] = await subs.subscribed.find(([ch]) => ch === plain, 5000, 'plain made again', subscribedBefore);
  assert.deepEqual(plainRes, {});
  assert.equal(sub.offset, 5);
  assert.deepEqual(subs.ended.items, []);
});

test('SubscribeUser subscribes a live connection; UnsubscribeUser ends it for good; after a reconnect, what the client may no longer have ends with not_restored', async () => {
  const user = uniq('ed-');
  const kept = uniq('lobby-kept-'); // granted by the connect hook throughout
  const taken = uniq('locked:taken-'); // granted, then not: clients may not subscribe to locked: by themselves
  const pushed = uniq('hist:pushed-'); // SubscribeUser, then UnsubscribeUser
  const open = uniq('lobby-open-'); // SubscribeUser: the client may subscribe to it itself, so it is made again
  const extra = uniq('locked:extra-'); // SubscribeUser: not granted by the hook, so not made again
  await server.control('grant', { user, channels: [kept, taken] });
  const c = newClient({ connectData: { user } });
  const subs = withServerSubs(c);
  const own = uniq('lobby-own-');
  const ownSub = c.subscribe(own);
  await within(5000, 'connect', c.connect());
  await within(5000, 'own subscription', ownSub.ready);
  await subs.announced.count(2, 5000, 'the granted channels');

  for (const channel of [pushed, open, extra]) await server.control('subscribe_user', { user, channel });
  await subs.announced.count(5, 5000, 'the SubscribeUser pushes');
  assert.deepEqual(subs.announced.items.slice(2).map(([ch]) => ch), [pushed, open, extra]);
  assert.equal(c.getSubscription(extra).serverSide, true);
  await server.control('publish', { channel: pushed, data: 'to ed' });
  await subs.messages.find(([ch]) => ch === pushed, 5000, 'the publication');

  await server.control('unsubscribe_user', { user, channel: pushed });
  const [, info] = await subs.ended.find(([ch]) => ch === pushed, 5000, 'the unsub push');
  assert.equal(info.code, 'server_unsubscribe');
  assert.equal(c.getSubscription(pushed), null);

  // The backend takes one grant away; the next connection names the four
  // server-side subscriptions left, and the server ends those it does not
  // make again.
  await server.control('grant', { user, channels: [kept] });
  const made = subs.subscribed.items.length;
  c.disconnect();
  await within(5000, 'reconnect', c.connect());
  await subs.ended.count(3, 5000, 'two not_restored pushes');
  assert.deepEqual(
    subs.ended.items.slice(1).sort(([a], [b]) => a.localeCompare(b)).map(([ch, i]) => [ch, i.code]),
    [[extra, 'not_restored'], [taken, 'not_restored']].sort(([a], [b]) => a.localeCompare(b)),
  );
  await subs.subscribed.count(made + 2, 5000, 'kept and open made again');
  assert.deepEqual(subs.subscribed.items.slice(made).map(([ch]) => ch).sort(), [kept, open].sort());
  await c.ping(); // answered after the resubscribe of the client's own
  for (const ch of [taken, extra, pushed]) assert.equal(c.getSubscription(ch), null, `${ch} is gone`);
  assert.equal(c.getSubscription(open).state, 'subscribed');
  assert.equal(ownSub.state, 'subscribed');
  assert.equal(ownSub.serverSide, false);
  assert.equal(subs.announced.items.length, 5, 'nothing new announced');

  // Publications prove it on the server's side: those to the channels
  // ended do not arrive, the later ones to those kept do.
  const count = subs.messages.items.length;
  for (const channel of [taken, extra, pushed]) await server.control('publish', { channel, data: 'not for ed' });
  await server.control('publish', { channel: kept, data: 'for ed' });
  await server.control('publish', { channel: open, data: 'for ed too' });
  await subs.messages.count(count + 2, 5000, 'the kept publications');
  assert.deepEqual(subs.messages.items.slice(count).map(([ch, d]) => [ch, d]), [[kept, 'for ed'], [open, 'for ed too']]);
});
