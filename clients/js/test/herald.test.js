// The client against a real `herald serve`: built from this repository,
// started on a free loopback port with namespaces (see herald-server.js),
// stopped, killed and restarted on the same port where a test needs it.
//
// Node 20 has no global WebSocket, so the client loads the `ws` package;
// test/run.js runs this file again with --experimental-websocket, where it
// uses Node's own WebSocket. The first test checks which one is in use.

import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { WebSocket as WsWebSocket } from 'ws';

import { Herald, HeraldError } from '../index.js';
import { startHerald, cleanup, CONFIG } from './herald-server.js';
import { Inbox, recordStates, uniq, waitFor, within } from './util.js';

let server; // shared by the tests that do not stop their server
const clients = new Set();

before(async () => {
  server = await startHerald();
});

afterEach(() => {
  for (const c of clients) c.disconnect();
  clients.clear();
});

after(cleanup);

/** A client that afterEach disconnects; short timeouts and backoff suit loopback. */
function newClient(url = server.url, options = {}) {
  const c = new Herald(url, { timeout: 5000, backoff: { min: 50, max: 500 }, ...options });
  clients.add(c);
  return c;
}

async function connected(options) {
  const c = newClient(undefined, options);
  await within(5000, 'connect', c.connect());
  return c;
}

test('connect: the connect command first, state events, client id', async (t) => {
  const c = newClient();
  const states = recordStates(c);
  assert.equal(c.state, 'disconnected');
  await within(5000, 'connect', c.connect());
  assert.equal(c.state, 'connected');
  assert.match(c.clientId, /^[A-Za-z0-9_-]{16}$/);
  assert.deepEqual(
    states.items.map((s) => s.state),
    ['connecting', 'connected'],
  );
  assert.equal(states.items[1].clientId, c.clientId);
  await c.connect(); // already connected: resolves at once

  // Which WebSocket is in use: Node's global one when there is one
  // (--experimental-websocket), else the ws package.
  if (typeof globalThis.WebSocket === 'function') {
    assert.ok(c._socket instanceof globalThis.WebSocket, 'uses globalThis.WebSocket');
    t.diagnostic('WebSocket: globalThis.WebSocket (Node built-in)');
  } else {
    assert.ok(c._socket instanceof WsWebSocket, 'uses the ws package');
    t.diagnostic('WebSocket: the ws package');
  }

  c.disconnect();
  assert.equal(c.state, 'disconnected');
  assert.equal(c.clientId, null);
  assert.deepEqual(states.items.at(-1), { state: 'disconnected', code: 1000, reason: 'disconnect() called', reconnect: false });
  await assert.rejects(c.publish('lobby', 1), { name: 'HeraldError', code: 'disconnected' });
});

test('publish and subscribe: JSON values and strings', async () => {
  const [a, b] = await Promise.all([connected(), connected()]);
  const ch = uniq('lobby-');
  const inbox = new Inbox();
  const sub = a.subscribe(ch, { onMessage: inbox.push });
  assert.equal(sub.state, 'subscribing');
  assert.deepEqual(await within(5000, 'subscribed', sub.ready), {}, 'no history: an empty result');
  assert.equal(sub.state, 'subscribed');

  const values = [
    { text: 'hi', n: 1, nested: { list: [1, 2, { deep: true }] } },
    'a plain string',
    'quotes " backslash \\ newline \n tab \t, ünïcödé ✓ and an emoji 🎉',
    42,
    -1.5,
    true,
    null,
    [1, 'two', null],
    '',
  ];
  for (const v of values) assert.deepEqual(await b.publish(ch, v), {}, 'no history: an empty result');
  await sub.publish('from the subscriber itself');

  const got = await inbox.count(values.length + 1);
  assert.deepEqual(
    got.map(([data]) => data),
    [...values, 'from the subscriber itself'],
  );
  for (const [, meta] of got) assert.deepEqual(meta, { channel: ch, offset: undefined, binary: false });
});

test('binary payloads round-trip byte for byte, non-UTF-8 and newlines included', async () => {
  const [a, b] = await Promise.all([connected(), connected()]);
  const ch = uniq('hist:bin-');
  const inbox = new Inbox();
  await within(5000, 'subscribed', a.subscribe(ch, { onMessage: inbox.push }).ready);

  const all = Uint8Array.from({ length: 256 }, (_, i) => i);
  // 0x0A is the header separator; the rest is invalid UTF-8 (a lone
  // continuation byte, an overlong encoding, a surrogate, 0xFF).
  const nasty = Uint8Array.from([0x0a, 0x0a, 0x80, 0xc0, 0xaf, 0xed, 0xa0, 0x80, 0xff, 0xfe, 0x00, 0x0a]);
  const big = Uint8Array.from({ length: 40_000 }, (_, i) => (i * 31) & 0xff);
  const window = new Uint8Array([9, 9, 9, 1, 2, 3, 9]).subarray(3, 6); // a view that does not start at 0
  const sent = [
    [all, all],
    [nasty, nasty],
    [big.buffer, big], // an ArrayBuffer
    [window, Uint8Array.from([1, 2, 3])],
    [Buffer.from([0xde, 0xad, 0xbe, 0xef]), Uint8Array.from([0xde, 0xad, 0xbe, 0xef])],
    [new Uint8Array(0), new Uint8Array(0)], // an empty payload
  ];
  for (const [data] of sent) await b.publish(ch, data);

  const got = await inbox.count(sent.length);
  got.forEach(([data, meta], i) => {
    assert.ok(data instanceof Uint8Array, `payload ${i} is a Uint8Array`);
    assert.deepEqual(data, sent[i][1], `payload ${i}`);
    assert.equal(data.buffer.byteLength, data.length, 'the payload owns its buffer (no header in it)');
    assert.equal(meta.binary, true);
    assert.equal(meta.offset, i + 1);
  });

  // History carries binary publications as base64; the client decodes them.
  const h = await a.history(ch);
  assert.deepEqual(
    h.publications.map((p) => [p.offset, p.binary, p.data]),
    sent.map(([, expected], i) => [i + 1, true, expected]),
  );
});

test('typed errors: HeraldError with the protocol code; the connection stays usable', async () => {
  const c = await connected();
  const isCode = (code) => (err) => {
    assert.ok(err instanceof HeraldError, `${err} is a HeraldError`);
    assert.equal(err.code, code);
    assert.equal(typeof err.message, 'string');
    assert.ok(err.message.length > 0);
    return true;
  };

  await assert.rejects(c.publish('not a channel', 1), isCode('bad_channel'));
  await assert.rejects(c.publish('nope:x', 1), isCode('bad_channel'), 'a namespace the server does not configure');
  await assert.rejects(c.history('lobby'), isCode('not_enabled'), 'no history in the "" namespace');
  await assert.rejects(c.presence('hist:x'), isCode('not_enabled'));
  await assert.rejects(c.presenceStats('lobby'), isCode('not_enabled'));
  await assert.rejects(c.history('hist:x', { limit: -1 }), isCode('bad_request'));

  // A subscription the server refuses: ready rejects, onError is told, and
  // the client forgets it.
  const errors = new Inbox();
  const sub = c.subscribe('a b', { onError: errors.push });
  await assert.rejects(sub.ready, isCode('bad_channel'));
  assert.equal(sub.state, 'unsubscribed');
  assert.equal(errors.items[0].code, 'bad_channel');
  assert.equal(c.getSubscription('a b'), null);

  // Local mistakes fail before anything is sent.
  const ok = c.subscribe('lobby');
  assert.throws(() => c.subscribe('lobby'), isCode('already_subscribed'));
  await assert.rejects(c.publish('lobby', undefined), TypeError);
  await assert.rejects(c.publish('lobby', { n: 1n }), TypeError, 'BigInt is not JSON');

  await ok.ready;
  await c.ping();
  assert.equal(c.state, 'connected');
});

test('history: limit, reverse, since; idempotent publish', async () => {
  const c = await connected();
  const ch = uniq('hist:h-');
  const values = [{ n: 1 }, 'two', Uint8Array.from([0, 10, 255]), null, { n: 5 }];
  const results = [];
  for (const v of values) results.push(await c.publish(ch, v));
  const epoch = results[0].epoch;
  assert.equal(typeof epoch, 'string');
  assert.deepEqual(
    results,
    values.map((_, i) => ({ offset: i + 1, epoch })),
  );

  const all = await c.history(ch);
  assert.equal(all.offset, 5);
  assert.equal(all.epoch, epoch);
  assert.deepEqual(
    all.publications,
    values.map((v, i) => ({ offset: i + 1, data: v, binary: v instanceof Uint8Array })),
  );

  const offsets = (h) => h.publications.map((p) => p.offset);
  assert.deepEqual(offsets(await c.history(ch, { limit: 2 })), [1, 2], 'the oldest first');
  assert.deepEqual(offsets(await c.history(ch, { limit: 2, reverse: true })), [5, 4], 'the newest first');
  assert.deepEqual(offsets(await c.history(ch, { since: { offset: 3, epoch } })), [4, 5]);
  assert.deepEqual(offsets(await c.history(ch, { limit: 0 })), []);

  const first = await c.publish(ch, { n: 6 }, { idempotencyKey: 'k-6' });
  const again = await c.publish(ch, { n: 6 }, { idempotencyKey: 'k-6' });
  assert.deepEqual(first, { offset: 6, epoch });
  assert.deepEqual(again, { offset: 6, epoch, duplicate: true });
  assert.equal((await c.history(ch)).publications.length, 6, 'the repeat published nothing');
});

test('presence, presenceStats, join and leave', async () => {
  const ch = uniq('chat:room-');
  const [a, b, c] = await Promise.all([connected(), connected(), connected()]);
  const joins = new Inbox();
  const leaves = new Inbox();
  await a.subscribe(ch, { onJoin: joins.push, onLeave: leaves.push }).ready;
  assert.deepEqual(await joins.count(1), [{ client: a.clientId }], 'a subscriber sees its own join');

  const bSub = b.subscribe(ch);
  await bSub.ready;
  await joins.find((i) => i.client === b.clientId, 5000, "b's join");

  assert.deepEqual(await a.presence(ch), {
    clients: { [a.clientId]: { client: a.clientId }, [b.clientId]: { client: b.clientId } },
  });
  assert.deepEqual(await b.presenceStats(ch), { clients: 2, users: 0 }, 'anonymous clients count in clients only');

  await bSub.unsubscribe();
  assert.equal(bSub.state, 'unsubscribed');
  assert.deepEqual(await leaves.count(1), [{ client: b.clientId }]);
  assert.deepEqual(await a.presenceStats(ch), { clients: 1, users: 0 });

  // A client that disconnects leaves every channel.
  await c.subscribe(ch).ready;
  const cId = c.clientId;
  await joins.find((i) => i.client === cId, 5000, "c's join");
  c.disconnect();
  await leaves.find((i) => i.client === cId, 5000, "c's leave");
  assert.deepEqual(Object.keys((await a.presence(ch)).clients), [a.clientId]);
});

test('request timeout: a frozen server; late replies are ignored; subscribe and connect timeouts reconnect', async (t) => {
  const s = await startHerald();
  t.after(() => s.stop());
  const c = newClient(s.url, { timeout: 300, backoff: { min: 50, max: 200 } });
  const states = recordStates(c);
  await within(5000, 'connect', c.connect());
  const inbox = new Inbox();
  await c.subscribe('lobby', { onMessage: inbox.push }).ready;

  await s.freeze(); // the process stops reading; the kernel still accepts bytes
  try {
    const start = Date.now();
    await assert.rejects(c.publish('lobby', 'late'), { name: 'HeraldError', code: 'timeout' });
    const elapsed = Date.now() - start;
    assert.ok(elapsed >= 290 && elapsed < 3000, `timed out after ${elapsed} ms`);
    await assert.rejects(c.history('hist:x'), { code: 'timeout' });
    assert.equal(c.state, 'connected', 'a request timeout does not end the connection');

    // A subscribe that times out leaves the server's view unknown: the
    // client starts over with a new connection. While the server stays
    // frozen, each attempt's handshake times out in turn.
    const from = states.items.length;
    const sub2 = c.subscribe('lobby2');
    const lost = await states.find((s) => s.state === 'disconnected', 3000, 'disconnected', from);
    assert.match(lost.reason, /subscribe to "lobby2" timed out/);
    assert.equal(lost.reconnect, true);
    await states.find((s) => s.reason === 'connect timeout', 5000, 'a connect timeout', from);
    s.thaw();

    await within(5000, 'resubscribed', sub2.ready);
    assert.equal(c.state, 'connected');
    await c.publish('lobby', 'after');
    // 'late' was published after all (the frozen server read it later): it
    // may have come as a push before the reconnect; 'after' must come.
    await inbox.find(([d]) => d === 'after', 5000, '"after"');
  } finally {
    s.thaw();
  }
});

test('reconnect after the server restarts on the same port: state events, backoff, resubscribe', async (t) => {
  const s1 = await startHerald();
  let s2;
  t.after(() => s2?.stop());
  let tokens = 0;
  const min = 100;
  const max = 400;
  const c = newClient(s1.url, { backoff: { min, max }, timeout: 2000, getToken: async () => `token-${++tokens}` });
  const states = recordStates(c);
  await within(5000, 'connect', c.connect());
  assert.equal(tokens, 1, 'without a token, getToken gives the first one');
  const firstId = c.clientId;
  const inbox = new Inbox();
  const subscribed = new Inbox();
  const sub = c.subscribe('lobby', { onMessage: inbox.push, onSubscribed: subscribed.push });
  await sub.ready;

  const from = states.items.length;
  const { code } = await s1.stop('SIGTERM');
  assert.equal(code, 0);
  const closed = await states.find((s) => s.state === 'disconnected', 5000, 'disconnected', from);
  assert.equal(closed.code, 1001, 'the server says it is going away');
  assert.equal(closed.reconnect, true);
  assert.equal(sub.state, 'subscribing');

  // With nothing listening, attempts fail and the delays grow: each one is
  // drawn at random below min·2^k, capped at max (full jitter).
  await states.until(() => states.items.slice(from).filter((s) => s.state === 'disconnected').length >= 5, 10_000, '5 failed attempts');
  const delays = states.items
    .slice(from)
    .filter((s) => s.state === 'disconnected')
    .map((s) => s.delay);
  delays.forEach((d, k) => assert.ok(d >= 0 && d < Math.min(max, min * 2 ** k), `delay ${k} = ${d} ms`));
  const attempts = states.items.slice(from).filter((s) => s.state === 'connecting');
  assert.deepEqual(
    attempts.slice(0, 4).map((s) => s.attempt),
    [1, 2, 3, 4],
  );
  assert.ok(tokens >= 1 + attempts.length, 'getToken before every reconnect attempt');

  s2 = await startHerald({ addr: s1.addr });
  await states.find((s) => s.state === 'connected', 10_000, 'connected again', from);
  assert.notEqual(c.clientId, firstId, 'a new connection, a new id');
  await subscribed.count(2, 5000, 'resubscribed');
  assert.equal(sub.state, 'subscribed');

  const other = newClient(s2.url);
  await other.connect();
  await other.publish('lobby', { after: 'restart' });
  assert.deepEqual((await inbox.count(1))[0][0], { after: 'restart' });
});

test('recovery fails after the server is killed and restarted: onRecoveryFailed("epoch_changed")', async (t) => {
  const s1 = await startHerald();
  let s2;
  t.after(() => s2?.stop());
  const c = newClient(s1.url, { backoff: { min: 50, max: 200 }, timeout: 2000 });
  const states = recordStates(c);
  await c.connect();
  const ch = 'chat:kill';
  const inbox = new Inbox();
  const failures = new Inbox();
  const sub = c.subscribe(ch, { onMessage: inbox.push, onRecoveryFailed: failures.push });
  await sub.ready;
  for (let i = 1; i <= 3; i++) await c.publish(ch, { i });
  await inbox.count(3);
  const oldEpoch = sub.epoch;
  assert.equal(sub.offset, 3);

  const from = states.items.length;
  await s1.stop('SIGKILL'); // a crash: no close frame, history gone
  const lost = await states.find((s) => s.state === 'disconnected', 5000, 'disconnected', from);
  assert.equal(lost.code, 1006);
  s2 = await startHerald({ addr: s1.addr });

  const [[reason, result]] = await failures.count(1, 10_000, 'onRecoveryFailed');
  assert.equal(reason, 'epoch_changed');
  assert.equal(result.recovered, false);
  assert.notEqual(result.epoch, oldEpoch);
  assert.equal(sub.epoch, result.epoch, 'the subscription goes on from the new epoch');
  assert.equal(sub.offset, 0);

  await c.publish(ch, { i: 'new' });
  const [data, meta] = (await inbox.count(4))[3];
  assert.deepEqual(data, { i: 'new' });
  assert.equal(meta.offset, 1, 'offsets start again in the new epoch');
});

test('recovery succeeds after the client loses its socket: every publication once, in order', async () => {
  const ch = uniq('chat:rec-');
  const publisher = await connected();

  // The publisher publishes {i: 1}, {i: 2}, ... without pause until told to
  // stop. The channel is fresh, so publication i has offset i.
  let published = 0;
  let stopAt = Infinity;
  const ticks = new Inbox();
  const publish = async () => {
    while (published < stopAt && published < 5000) {
      await publisher.publish(ch, { i: published + 1 });
      ticks.push(++published);
    }
  };

  // Once the old socket is closed, the reconnect waits in getToken until 5
  // more publications are out: those are certainly missed live, and must
  // come back through recovery.
  let gap = null;
  const getToken = async () => {
    if (gap) await ticks.until(() => published >= gap.published + 5, 5000, '5 publications during the gap');
    return 'fresh';
  };
  const a = newClient(server.url, { token: 'first', getToken, backoff: { min: 20, max: 100 } });
  const states = recordStates(a);
  await a.connect();
  const received = new Inbox();
  const subscribed = new Inbox();
  const failures = new Inbox();
  let closed = false;
  const sub = a.subscribe(ch, {
    onMessage: (data, meta) => {
      received.push([data.i, meta.offset]);
      if (data.i === 30 && !closed) {
        closed = true;
        a._socket.close(); // the test hook: drop the socket from the client's side
      }
    },
    onSubscribed: subscribed.push,
    onRecoveryFailed: failures.push,
  });
  a.on('state', (e) => {
    if (e.state === 'disconnected' && !gap) gap = { published, offset: sub.offset };
  });
  await sub.ready;
  const publishing = publish();

  const [, again] = await subscribed.count(2, 10_000, 'the resubscribe');
  stopAt = published + 50; // keep publishing through the seam, then stop
  await within(10_000, 'the publisher', publishing);
  await received.count(published, 10_000, `all ${published} publications`);

  assert.equal(again.recovered, true);
  assert.ok(again.offset >= gap.published + 5 && again.offset > gap.offset, `${again.offset - gap.offset} publications recovered`);
  assert.deepEqual(failures.items, []);
  const expected = Array.from({ length: published }, (_, k) => [k + 1, k + 1]);
  assert.deepEqual(received.items, expected, 'no gap, no duplicate, offsets in order');
  assert.equal(sub.offset, published);
  const lost = states.items.find((s) => s.state === 'disconnected');
  assert.equal(lost.reconnect, true);
});

/** An HS256 JWT, signed here with node:crypto (the server checks it). */
async function hs256(secret, claims) {
  const { createHmac } = await import('node:crypto');
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
}

test('token refresh: getToken renews the token before it expires, and the connection stays', async (t) => {
  const secret = 'a-test-secret-that-is-at-least-32-bytes-long';
  const authed = await startHerald({ config: `${CONFIG}\njwt_secret: ${secret}\n` });
  t.after(() => authed.stop());
  let issued = 0;
  const getToken = () => {
    issued++;
    // jwt exp has second precision: 3 s from now expires in 2-3 s.
    return hs256(secret, { sub: 'ada', exp: Math.floor(Date.now() / 1000) + 3 });
  };
  const c = newClient(authed.url, { getToken });
  const states = recordStates(c);
  await within(5000, 'connect', c.connect());
  // Past the first token's expiry: without a refresh the server would have
  // closed with 4004 by now.
  await new Promise((r) => setTimeout(r, 4500));
  assert.equal(c.state, 'connected');
  assert.ok(issued >= 2, `getToken called ${issued} times`);
  assert.deepEqual(states.items.filter((s) => s.state === 'disconnected'), []);
  const sub = c.subscribe('lobby', { onMessage() {} });
  await within(5000, 'subscribe', sub.ready);
});

test('subscription token: a granted channel needs it, and it is sent again on resubscribe', async (t) => {
  const secret = 'a-test-secret-that-is-at-least-32-bytes-long';
  const config = `
jwt_secret: ${secret}
namespaces:
  - name: private
    history_size: 10
    history_ttl: 1m
    allow_subscribe: granted
`;
  const authed = await startHerald({ config });
  t.after(() => authed.stop());
  const token = await hs256(secret, { sub: 'bo' });
  const c = newClient(authed.url, { token });
  await within(5000, 'connect', c.connect());
  const denied = c.subscribe('private:x', {});
  await assert.rejects(denied.ready, (err) => err instanceof HeraldError && err.code === 'permission_denied');
  const inbox = new Inbox();
  const sub = c.subscribe('private:x', { token: await hs256(secret, { sub: 'bo', channel: 'private:x' }), onMessage: inbox.push });
  await within(5000, 'subscribe', sub.ready);
  c._socket.close(); // a reconnect resubscribes with the same token
  await within(5000, 'reconnect', new Promise((resolve) => c.on('state', (s) => s.state === 'connected' && resolve())));
  await within(5000, 'resubscribe', new Promise((resolve) => { const t = setInterval(() => { if (sub.state === 'subscribed') { clearInterval(t); resolve(); } }, 10); }));
  assert.equal(sub.state, 'subscribed');
});

/** The server's count of messages refused for the rate (herald_rate_limited_total). */
async function rateLimitedTotal(server) {
  const text = await (await fetch(`http://${server.addr}/metrics`)).text();
  const m = /^herald_rate_limited_total (\d+)$/m.exec(text);
  assert.ok(m, 'herald_rate_limited_total in /metrics');
  return Number(m[1]);
}

test('rate limit: ten subscribes at --message-rate 5 all end up live, and the client stays up', async (t) => {
  // A burst of 6: of connect and ten subscribes sent at once, about five
  // are refused (rate_limited), fewer than would get the connection closed.
  const s = await startHerald({ config: `${CONFIG}\nmessage_rate: 5\nmessage_burst: 6\n` });
  t.after(() => s.stop());
  const c = newClient(s.url, { backoff: { min: 500, max: 5000 } });
  const states = recordStates(c);
  await within(5000, 'connect', c.connect());
  const channels = Array.from({ length: 10 }, (_, i) => uniq(`lobby-rate${i}-`));
  const errors = new Inbox();
  const received = new Inbox();
  const subs = channels.map((ch) => c.subscribe(ch, { onMessage: (data) => received.push(data), onError: errors.push }));
  await within(30_000, 'every subscription', Promise.all(subs.map((sub) => sub.ready)));
  // After a 4007 on the way (possible, if the retries come too close), the
  // client resubscribes: wait for all ten to be live on one connection.
  await waitFor(() => c.state === 'connected' && subs.every((sub) => sub.state === 'subscribed'), 30_000, 'all ten subscribed');
  assert.ok((await rateLimitedTotal(s)) >= 1, 'the server refused some of the subscribes');
  assert.deepEqual(errors.items, [], 'no subscription ended');

  // Live on the server: a publication to each channel reaches the client.
  // (The publisher is rate limited too, and retries in the same way.)
  const publisher = newClient(s.url, { backoff: { min: 500, max: 5000 } });
  await within(5000, 'connect', publisher.connect());
  await within(30_000, 'ten publishes', Promise.all(channels.map((ch) => publisher.publish(ch, ch))));
  await received.count(10, 30_000, 'a publication on each channel');
  assert.deepEqual([...received.items].sort(), [...channels].sort());
  assert.equal(c.state, 'connected');
  assert.deepEqual(states.items.filter((e) => e.state === 'disconnected' && !e.reconnect), [], 'the client never stopped');
  t.diagnostic(`closes on the way: ${states.items.filter((e) => e.state === 'disconnected').map((e) => e.code).join(', ') || 'none'}`);
});

test('rate limit: a flooding client is closed with 4007, reconnects, and every publish lands exactly once', async (t) => {
  const s = await startHerald({ config: `${CONFIG}\nmessage_rate: 10\nmessage_burst: 10\n` });
  t.after(() => s.stop());
  const c = newClient(s.url, { backoff: { min: 100, max: 1000 } });
  const states = recordStates(c);
  await within(5000, 'connect', c.connect());
  const ch = uniq('hist:flood-');
  const n = 40; // sent at once: 10 accepted, 10 refused, and the rest over twice the rate
  const results = await within(60_000, 'every publish', Promise.all(Array.from({ length: n }, (_, i) => c.publish(ch, i))));
  const closed = states.items.find((e) => e.state === 'disconnected');
  assert.equal(closed?.code, 4007, 'the server closed the flooding connection with 4007');
  assert.equal(closed.reconnect, true);
  assert.equal(c.state, 'connected');

  // Publishes lost with the connection were retried with their keys: each
  // happened once, and each result is its publication's offset.
  const h = await within(30_000, 'history', c.history(ch));
  assert.deepEqual(
    h.publications.map((p) => p.data).sort((a, b) => a - b),
    Array.from({ length: n }, (_, i) => i),
  );
  for (const p of h.publications) assert.equal(results[p.data].offset, p.offset, `publish ${p.data}`);
});

test('rate limit: after a 4007, a client with more subscriptions than the server lets through at once gets them all back', async (t) => {
  // 25 subscribes at once against a burst of 5: 5 pass, 5 are refused, and
  // the rest gets the connection closed (4007). Sent at once again on every
  // reconnect, they would get it closed every time; sent one at a time
  // (after a 4007 the client starts with its line), they all pass.
  const s = await startHerald({ config: `${CONFIG}\nmessage_rate: 5\nmessage_burst: 5\n` });
  t.after(() => s.stop());
  const c = newClient(s.url, { backoff: { min: 500, max: 5000 } });
  const states = recordStates(c);
  await within(5000, 'connect', c.connect());
  const errors = new Inbox();
  const subs = Array.from({ length: 25 }, (_, i) => c.subscribe(uniq(`lobby-many${i}-`), { onError: errors.push }));
  await states.find((e) => e.state === 'disconnected', 10_000, 'the close');
  assert.equal(states.items.find((e) => e.state === 'disconnected').code, 4007);
  await waitFor(() => c.state === 'connected' && subs.every((sub) => sub.state === 'subscribed'), 60_000, 'all 25 subscribed');
  const closes = states.items.filter((e) => e.state === 'disconnected');
  assert.ok(closes.length <= 3, `reconnected ${closes.length} times: ${closes.map((e) => e.code)}`);
  assert.ok(closes.every((e) => e.reconnect));
  assert.deepEqual(errors.items, []);
});

test('unsubscribe_user: the subscription ends with the server\'s code, and a reconnect does not bring it back', async (t) => {
  const secret = 'a-test-secret-that-is-at-least-32-bytes-long';
  const apiKey = 'a-test-api-key-long-enough';
  const s = await startHerald({ config: `${CONFIG}\njwt_secret: ${secret}\napi_key: ${apiKey}\n` });
  t.after(() => s.stop());
  const api = async (method, route, body) => {
    const res = await fetch(`http://${s.addr}/api/v1/${route}`, {
      method,
      headers: { Authorization: `Bearer ${apiKey}`, 'Content-Type': 'application/json' },
      body: body && JSON.stringify(body),
    });
    const text = await res.text();
    assert.equal(res.status, 200, `${method} ${route}: ${text}`);
    return JSON.parse(text);
  };

  const c = newClient(s.url, { getToken: () => hs256(secret, { sub: 'ada' }) });
  const states = recordStates(c);
  await within(5000, 'connect', c.connect());
  const gone = uniq('lobby-gone-');
  const kept = uniq('lobby-kept-');
  const ended = new Inbox();
  const goneMessages = new Inbox();
  const keptMessages = new Inbox();
  const keptSubscribed = new Inbox();
  const sub = c.subscribe(gone, { onUnsubscribed: ended.push, onMessage: goneMessages.push });
  const other = c.subscribe(kept, { onSubscribed: keptSubscribed.push, onMessage: keptMessages.push });
  await within(5000, 'subscribed', Promise.all([sub.ready, other.ready]));
  assert.deepEqual((await api('GET', 'channels')).channels, { [gone]: 1, [kept]: 1 });

  await api('POST', 'unsubscribe_user', { user: 'ada', channel: gone });
  const [info] = await ended.count(1, 5000, 'onUnsubscribed');
  assert.equal(info.code, 'server_unsubscribe');
  assert.equal(typeof info.reason, 'string');
  assert.equal(sub.state, 'unsubscribed');
  assert.equal(c.getSubscription(gone), null);
  assert.equal(other.state, 'subscribed');

  // A reconnect resubscribes the other channel, not this one.
  const from = states.items.length;
  c._socket.close();
  await states.find((e) => e.state === 'connected', 10_000, 'connected again', from);
  await keptSubscribed.count(2, 5000, 'the other channel resubscribed');
  await c.ping(); // answered after every subscribe of the new connection
  const { channels } = await api('GET', 'channels');
  assert.equal(channels[gone], undefined, `not subscribed on the server: ${JSON.stringify(channels)}`);
  assert.ok(channels[kept] >= 1);

  // Nothing published to it arrives: a publication to the other channel,
  // made after it, reaches the same connection after it would have.
  const publisher = newClient(s.url, { token: await hs256(secret, { sub: 'bo' }) });
  await within(5000, 'connect', publisher.connect());
  await publisher.publish(gone, 'not for ada any more');
  await publisher.publish(kept, 'for ada');
  await keptMessages.count(1, 5000, 'the publication on the other channel');
  assert.deepEqual(goneMessages.items, []);
  assert.equal(ended.items.length, 1);
});
