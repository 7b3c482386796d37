// Protocol behaviour that `herald serve` cannot be made to show on demand:
// tokens on the wire, `message` pushes (the server sends them only through
// its Go API), pushes for unknown channels, every close code, a server that
// never answers the handshake. A scripted herald.v1 server built on the `ws`
// package plays the server's part; herald.test.js covers the real one.

import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { WebSocketServer } from 'ws';

import { Herald, HeraldError } from '../index.js';
import { Inbox, recordStates, waitFor, within } from './util.js';

const cleanups = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

/**
 * A herald.v1 server whose replies a test scripts: reply(cmd, conn) returns
 * the result, or {error}, or false for no reply; by default connect gets a
 * client id and every other command an empty success.
 */
async function scriptedServer(reply = () => undefined) {
  const wss = new WebSocketServer({
    host: '127.0.0.1',
    port: 0,
    handleProtocols: (protocols) => (protocols.has('herald.v1') ? 'herald.v1' : false),
  });
  await once(wss, 'listening');
  const conns = new Inbox();
  wss.on('connection', (ws) => {
    const conn = { ws, n: conns.items.length + 1, commands: new Inbox() };
    conn.send = (msg) => ws.send(typeof msg === 'string' || msg instanceof Uint8Array ? msg : JSON.stringify(msg));
    conns.push(conn);
    ws.on('message', (data, isBinary) => {
      let cmd;
      if (isBinary) {
        const nl = data.indexOf(0x0a);
        cmd = { ...JSON.parse(data.subarray(0, nl).toString()), payload: data.subarray(nl + 1) };
      } else {
        cmd = JSON.parse(data.toString());
      }
      conn.commands.push(cmd);
      let out = reply(cmd, conn);
      if (out === false) return;
      if (out === undefined) out = cmd.cmd === 'connect' ? { client: `client-${conn.n}` } : undefined;
      if (out?.error) conn.send({ id: cmd.id, error: out.error });
      else conn.send(out === undefined ? { id: cmd.id } : { id: cmd.id, result: out });
    });
  });
  const server = {
    url: `ws://127.0.0.1:${wss.address().port}/ws`,
    conns,
    close: () =>
      new Promise((resolve) => {
        for (const ws of wss.clients) ws.terminate();
        wss.close(resolve);
      }),
  };
  cleanups.push(server.close);
  return server;
}

function newClient(url, options = {}) {
  const c = new Herald(url, { timeout: 2000, backoff: { min: 10, max: 20 }, ...options });
  cleanups.push(() => c.disconnect());
  return c;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

test('connect carries the token; getToken gives a fresh one before each reconnect; since tracks the last offset', async () => {
  const s = await scriptedServer((cmd, conn) => {
    if (cmd.cmd !== 'subscribe') return undefined;
    return conn.n === 1 ? { offset: 5, epoch: 'E1' } : { offset: 7, epoch: 'E1', recovered: true };
  });
  let n = 0;
  const c = newClient(s.url, { token: 'first', getToken: async () => `fresh-${++n}` });
  await c.connect();
  const inbox = new Inbox();
  const sub = c.subscribe('room', { onMessage: inbox.push });
  assert.deepEqual(await sub.ready, { offset: 5, epoch: 'E1' });

  const [c1] = s.conns.items;
  await c1.commands.count(2);
  assert.deepEqual(c1.commands.items, [
    { id: 1, cmd: 'connect', token: 'first' },
    { id: 2, cmd: 'subscribe', channel: 'room' },
  ]);
  assert.equal(c.clientId, 'client-1');
  assert.equal(n, 0, 'the first attempt uses the given token');

  c1.send({ push: 'pub', channel: 'room', offset: 6, data: 'six' });
  await inbox.count(1);
  assert.equal(sub.offset, 6);
  c1.ws.close(4003, 'go away for a moment');

  const c2 = (await s.conns.count(2, 5000, 'a reconnect'))[1];
  await c2.commands.count(2);
  assert.deepEqual(c2.commands.items[0], { id: c2.commands.items[0].id, cmd: 'connect', token: 'fresh-1' });
  assert.deepEqual(c2.commands.items[1].since, { offset: 6, epoch: 'E1' });

  // Recovered: the reply says offset 7, but publication 7 has not arrived
  // yet; were the connection lost now, the next resubscribe must still ask
  // for everything after 6.
  await sub.ready;
  c2.ws.close(4001, 'slow consumer');
  const c3 = (await s.conns.count(3, 5000, 'a second reconnect'))[2];
  await c3.commands.count(2);
  assert.equal(c3.commands.items[0].token, 'fresh-2');
  assert.deepEqual(c3.commands.items[1].since, { offset: 6, epoch: 'E1' });
  assert.equal(n, 2);
});

// An unmasked server text frame, built by hand so that several can go out
// in one TCP write (and so be read by the client in one chunk).
function textFrame(obj) {
  const payload = Buffer.from(JSON.stringify(obj));
  assert.ok(payload.length < 126);
  return Buffer.concat([Buffer.from([0x81, payload.length]), payload]);
}

test('a reply and the pushes after it in one TCP chunk are handled in order', async () => {
  // The ws package may emit every message of a chunk in the same tick: the
  // reply must take effect before the next frame, not in a later microtask.
  const s = await scriptedServer((cmd, conn) => {
    if (cmd.cmd !== 'subscribe') return undefined;
    const reply = conn.n === 1 ? { offset: 5, epoch: 'E1' } : { offset: 9, epoch: 'E2', recovered: false, reason: 'epoch_changed' };
    const next = conn.n === 1 ? 6 : 10;
    conn.ws._socket.write(
      Buffer.concat([
        textFrame({ id: cmd.id, result: reply }),
        textFrame({ push: 'pub', channel: cmd.channel, offset: next, data: next }),
      ]),
    );
    return false;
  });
  const c = newClient(s.url);
  await c.connect();
  const events = [];
  const sub = c.subscribe('room', {
    onSubscribed: (r) => events.push(['subscribed', sub.offset, r.offset]),
    onRecoveryFailed: (reason) => events.push(['recovery failed', reason]),
    onMessage: (data) => events.push(['message', data, sub.offset]),
  });
  await sub.ready;
  await c.ping();
  assert.equal(sub.offset, 6);

  s.conns.items[0].ws.close(4003, 'again');
  await s.conns.count(2, 5000, 'a reconnect');
  await s.conns.items[1].commands.count(2);
  await c.ping();
  assert.deepEqual(s.conns.items[1].commands.items[1].since, { offset: 6, epoch: 'E1' });
  assert.equal(sub.offset, 10);
  assert.equal(sub.epoch, 'E2');
  assert.deepEqual(events, [
    ['subscribed', 5, 5],
    ['message', 6, 6],
    ['recovery failed', 'epoch_changed'],
    ['subscribed', 9, 9],
    ['message', 10, 10],
  ]);
});

test('an attempt whose getToken fails is retried with backoff', async () => {
  const s = await scriptedServer();
  let calls = 0;
  const c = newClient(s.url, {
    getToken: async () => {
      if (++calls === 1) throw new Error('auth service down');
      return 'ok';
    },
  });
  const states = recordStates(c);
  await within(5000, 'connect', c.connect());
  assert.equal(calls, 2);
  assert.match(states.items.find((e) => e.state === 'disconnected').reason, /getToken failed: auth service down/);
  assert.equal((await s.conns.items[0].commands.count(1))[0].token, 'ok');
});

test('message pushes, text and binary, reach on("message"); unknown push kinds are ignored', async (t) => {
  const warn = t.mock.method(console, 'warn', () => {});
  const s = await scriptedServer();
  const c = newClient(s.url);
  const messages = new Inbox();
  const off = c.on('message', messages.push);
  await c.connect();
  const [conn] = s.conns.items;
  conn.send({ push: 'future-kind', data: 1 });
  conn.send({ push: 'message', data: { x: 1 }, extra: 'unknown fields are fine' });
  conn.send(Buffer.concat([Buffer.from('{"push":"message"}\n'), Buffer.from([0x00, 0xff, 0x0a])]));
  const got = await messages.count(2);
  assert.deepEqual(got[0], [{ x: 1 }, { binary: false }]);
  assert.deepEqual(got[1], [Uint8Array.from([0x00, 0xff, 0x0a]), { binary: true }]);

  off();
  conn.send({ push: 'message', data: 'after off()' });
  await c.ping(); // the reply comes after the push: it has been handled
  assert.equal(messages.items.length, 2);
  assert.equal(warn.mock.callCount(), 0);
});

test('a push for an unknown subscription is ignored and logged once per channel', async (t) => {
  const warn = t.mock.method(console, 'warn', () => {});
  const s = await scriptedServer((cmd, conn) => {
    // A publication in flight when the unsubscribe arrives: expected, not logged.
    if (cmd.cmd === 'unsubscribe') conn.send({ push: 'pub', channel: cmd.channel, data: 'late' });
    return undefined;
  });
  const c = newClient(s.url);
  await c.connect();
  const [conn] = s.conns.items;
  const inbox = new Inbox();
  const sub = c.subscribe('real', { onMessage: inbox.push });
  await sub.ready;
  conn.send({ push: 'pub', channel: 'ghost', data: 1 });
  conn.send({ push: 'pub', channel: 'ghost', data: 2 });
  conn.send({ push: 'join', channel: 'ghost', info: { client: 'x' } });
  conn.send({ push: 'pub', channel: 'ghost2', data: 3 });
  conn.send({ push: 'pub', channel: 'real', data: 4 });
  await c.ping();
  assert.deepEqual(inbox.items, [[4, { channel: 'real', offset: undefined, binary: false }]]);
  assert.equal(warn.mock.callCount(), 2);
  assert.match(warn.mock.calls[0].arguments[0], /"ghost"/);
  assert.match(warn.mock.calls[1].arguments[0], /"ghost2"/);

  await sub.unsubscribe();
  await c.ping();
  assert.equal(inbox.items.length, 1, 'no callback after unsubscribe');
  assert.equal(warn.mock.callCount(), 2, 'pushes in flight at unsubscribe are not logged');

  // Subscribed again at once: the push in flight at the unsubscribe is the
  // old subscription's, not the new one's; what follows is the new one's.
  await c.subscribe('real').ready;
  const again = new Inbox();
  const leaving = c.getSubscription('real').unsubscribe();
  const sub2 = c.subscribe('real', { onMessage: again.push });
  await leaving;
  await sub2.ready;
  conn.send({ push: 'pub', channel: 'real', data: 'new' });
  await c.ping();
  assert.deepEqual(
    again.items.map(([data]) => data),
    ['new'],
  );
  assert.equal(warn.mock.callCount(), 2);
});

for (const code of [1008, 4500, 4999]) {
  test(`close ${code} stops reconnecting`, async () => {
    const s = await scriptedServer();
    const c = newClient(s.url);
    const states = recordStates(c);
    const sub = c.subscribe('room');
    await c.connect();
    await sub.ready;
    s.conns.items[0].ws.close(code, 'forbidden');
    const ev = await states.find((e) => e.state === 'disconnected', 5000, 'disconnected');
    assert.deepEqual(ev, { state: 'disconnected', code, reason: 'forbidden', reconnect: false });
    await sleep(200); // ten times the longest backoff delay
    assert.equal(s.conns.items.length, 1, 'no new connection');
    assert.equal(c.state, 'disconnected');
    assert.equal(sub.state, 'subscribing', 'kept, for a later connect()');
    await assert.rejects(c.publish('room', 1), { code: 'disconnected' });

    // connect() starts over, and the subscription comes back.
    await c.connect();
    await s.conns.items[1].commands.find((cmd) => cmd.cmd === 'subscribe', 5000, 'the resubscribe');
  });
}

for (const code of [1001, 1011, 4001, 4003, 4007, 4499]) {
  test(`close ${code} reconnects`, async () => {
    const s = await scriptedServer();
    const c = newClient(s.url);
    const states = recordStates(c);
    await c.connect();
    s.conns.items[0].ws.close(code, 'bye');
    const ev = await states.find((e) => e.state === 'disconnected', 5000, 'disconnected');
    assert.equal(ev.code, code);
    assert.equal(ev.reconnect, true);
    assert.ok(ev.delay >= 0 && ev.delay < 10);
    await s.conns.count(2, 5000, 'a reconnect');
    await states.find((e) => e.state === 'connected', 5000, 'connected', 3);
  });
}

test('connect() rejects when the server closes for good before the client is connected', async () => {
  const s = await scriptedServer((cmd, conn) => {
    conn.ws.close(4500, 'no entry');
    return false;
  });
  const c = newClient(s.url);
  const sub = c.subscribe('room');
  await assert.rejects(c.connect(), (err) => err instanceof HeraldError && err.code === 'disconnected' && /4500/.test(err.message));
  await assert.rejects(sub.ready, { code: 'disconnected' });
});

test('a refused connect: the server\'s close decides; connect() rejects with its error', async () => {
  // As Herald does for a bad token: an "unauthorized" reply, then close 4501.
  const s = await scriptedServer((cmd, conn) => {
    if (cmd.cmd !== 'connect') return undefined;
    conn.send({ id: cmd.id, error: { code: 'unauthorized', message: 'token expired' } });
    setTimeout(() => conn.ws.close(4501, 'invalid token'), 20);
    return false;
  });
  const c = newClient(s.url, { token: 'stale' });
  const states = recordStates(c);
  await assert.rejects(c.connect(), (err) => err instanceof HeraldError && err.code === 'unauthorized' && err.message === 'token expired');
  assert.deepEqual(states.items.at(-1), { state: 'disconnected', code: 4501, reason: 'invalid token', reconnect: false });
  await sleep(100);
  assert.equal(s.conns.items.length, 1, 'not again with the same token');
});

test('a refused connect that the server leaves open ends at the attempt timeout', async () => {
  const s = await scriptedServer((cmd) => (cmd.cmd === 'connect' ? { error: { code: 'unavailable', message: 'try later' } } : undefined));
  const c = newClient(s.url, { timeout: 200 });
  const states = recordStates(c);
  c.connect();
  const ev = await states.find((e) => e.state === 'disconnected', 5000, 'disconnected');
  assert.equal(ev.reason, 'connect refused: unavailable: try later');
  assert.equal(ev.reconnect, true);
  await s.conns.count(2, 5000, 'a new attempt');
});

test('a request made while reconnecting waits for the connection and follows the resubscribe', async () => {
  const s = await scriptedServer((cmd, conn) => {
    if (cmd.cmd === 'publish') return { offset: 1, epoch: 'E' };
    if (cmd.cmd === 'subscribe' && conn.n === 1) setTimeout(() => conn.ws.close(4003, 'moved'), 0);
    return undefined;
  });
  const c = newClient(s.url, { backoff: { min: 50, max: 50 } });
  const states = recordStates(c);
  await c.connect();
  c.subscribe('room');
  await states.find((e) => e.state === 'disconnected', 5000, 'disconnected');
  const result = await c.publish('room', { queued: true }, { idempotencyKey: 'k1' });
  assert.deepEqual(result, { offset: 1, epoch: 'E' });
  const [, c2] = s.conns.items;
  assert.deepEqual(
    c2.commands.items.map((cmd) => cmd.cmd),
    ['connect', 'subscribe', 'publish'],
  );
  assert.deepEqual(c2.commands.items[2].data, { queued: true });
  assert.equal(c2.commands.items[2].idempotency_key, 'k1');
});

test('binary publish frames: JSON header, newline, the bytes', async () => {
  const s = await scriptedServer();
  const c = newClient(s.url);
  await c.connect();
  await c.publish('files', Uint8Array.from([0x0a, 0xff, 0x00]));
  await c.publish('files', Uint8Array.from([0x0a]), { retry: false });
  const [, cmd, plain] = await s.conns.items[0].commands.count(3);
  assert.deepEqual(cmd.payload, Buffer.from([0x0a, 0xff, 0x00]));
  assert.deepEqual(Object.keys(cmd).sort(), ['channel', 'cmd', 'id', 'idempotency_key', 'payload'], 'no data field in the header');
  assert.deepEqual(Object.keys(plain).sort(), ['channel', 'cmd', 'id', 'payload']);
});

test('a subscribe answered "unavailable" is retried after a backoff delay', async () => {
  let tries = 0;
  const s = await scriptedServer((cmd) => {
    if (cmd.cmd === 'subscribe' && ++tries < 3) return { error: { code: 'unavailable', message: 'broker down' } };
    return undefined;
  });
  const c = newClient(s.url);
  await c.connect();
  const errors = new Inbox();
  const sub = c.subscribe('room', { onError: errors.push });
  await within(5000, 'subscribed', sub.ready);
  assert.equal(tries, 3);
  assert.deepEqual(errors.items, []);
});

test('disconnect() fails outstanding requests and clears every timer', async (t) => {
  t.mock.method(Math, 'random', () => 0.5);
  const s = await scriptedServer();
  const c = newClient(s.url, { backoff: { min: 60_000, max: 60_000 }, timeout: 60_000 });
  const states = recordStates(c);
  await c.connect();
  s.conns.items[0].ws.close(4003, 'later');
  const ev = await states.find((e) => e.state === 'disconnected', 5000, 'disconnected');
  assert.equal(ev.delay, 30_000);
  const queued = c.publish('room', 'waits for the connection');
  const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
  const before = timers();
  c.disconnect();
  await assert.rejects(queued, { code: 'disconnected' });
  assert.ok(timers() <= before - 2, 'the reconnect timer and the request timer are gone');
  assert.equal(c._reconnectTimer, null);
  assert.equal(c._openTimer, null);
  assert.equal(c._pending.size + c._queue.size, 0);
  assert.deepEqual(states.items.at(-1), { state: 'disconnected', code: 1000, reason: 'disconnect() called', reconnect: false });
});

test('connect timeout: a server that accepts TCP but never answers the handshake', async () => {
  const sockets = new Set();
  const tcp = net.createServer((sock) => sockets.add(sock));
  tcp.listen(0, '127.0.0.1');
  await once(tcp, 'listening');
  cleanups.push(() => {
    for (const sock of sockets) sock.destroy();
    return new Promise((resolve) => tcp.close(resolve));
  });
  const c = newClient(`ws://127.0.0.1:${tcp.address().port}/ws`, { timeout: 200 });
  const states = recordStates(c);
  const start = Date.now();
  c.connect();
  const ev = await states.find((e) => e.state === 'disconnected', 5000, 'disconnected');
  assert.deepEqual({ ...ev, delay: 0 }, { state: 'disconnected', code: 1006, reason: 'connect timeout', reconnect: true, delay: 0 });
  assert.ok(Date.now() - start >= 190);
});

test('backoff: full jitter, below min·2^attempt, capped at max', async (t) => {
  // A port with nothing listening: every attempt is refused at once.
  const tcp = net.createServer().listen(0, '127.0.0.1');
  await once(tcp, 'listening');
  const { port } = tcp.address();
  await new Promise((resolve) => tcp.close(resolve));

  const delays = async (random) => {
    t.mock.method(Math, 'random', () => random);
    const c = newClient(`ws://127.0.0.1:${port}/ws`, { backoff: { min: 10, max: 80 } });
    const states = recordStates(c);
    c.connect();
    await states.until(() => states.items.filter((e) => e.state === 'disconnected').length >= 6, 5000, '6 attempts');
    c.disconnect();
    t.mock.restoreAll();
    return states.items.filter((e) => e.state === 'disconnected' && e.reconnect).slice(0, 6).map((e) => e.delay);
  };
  assert.deepEqual(await delays(0.999), [9, 19, 39, 79, 79, 79], 'the ceilings: 10, 20, 40, then max');
  assert.deepEqual(await delays(0), [0, 0, 0, 0, 0, 0], 'full jitter: from zero');
});

test('publish: a key per publish; answered "unavailable", it is retried with the same key; "duplicate" is passed on', async () => {
  // Every key's first attempt is refused; its retry is a duplicate, as after
  // a broker that stored the publication but failed to answer.
  const seen = new Set();
  const s = await scriptedServer((cmd) => {
    if (cmd.cmd !== 'publish') return undefined;
    if (!seen.has(cmd.idempotency_key)) {
      seen.add(cmd.idempotency_key);
      return { error: { code: 'unavailable', message: 'broker down' } };
    }
    return { offset: seen.size, epoch: 'E', duplicate: true };
  });
  const c = newClient(s.url);
  await c.connect();
  assert.deepEqual(await c.publish('room', { n: 1 }), { offset: 1, epoch: 'E', duplicate: true });
  assert.deepEqual(await c.publish('room', Uint8Array.from([1, 2])), { offset: 2, epoch: 'E', duplicate: true });
  assert.deepEqual(await c.publish('room', 'mine', { idempotencyKey: 'my-key' }), { offset: 3, epoch: 'E', duplicate: true });

  const pubs = s.conns.items[0].commands.items.filter((cmd) => cmd.cmd === 'publish');
  assert.equal(pubs.length, 6, 'each publish sent twice');
  for (let i = 0; i < 6; i += 2) {
    assert.equal(pubs[i + 1].idempotency_key, pubs[i].idempotency_key, 'the retry carries the same key');
    assert.notEqual(pubs[i + 1].id, pubs[i].id);
  }
  assert.match(pubs[0].idempotency_key, /^[A-Za-z0-9_-]{22}$/, '16 random bytes, base64url');
  assert.match(pubs[2].idempotency_key, /^[A-Za-z0-9_-]{22}$/);
  assert.notEqual(pubs[2].idempotency_key, pubs[0].idempotency_key, 'a new key per publish');
  assert.deepEqual(pubs[1].data, { n: 1 });
  assert.deepEqual(pubs[3].payload, Buffer.from([1, 2]), 'bytes retried as bytes');
  assert.equal(pubs[4].idempotency_key, 'my-key', "the caller's key");
  assert.equal(pubs[5].idempotency_key, 'my-key');
});

test('publish: lost with the connection before the reply, it is retried with the same key once reconnected', async () => {
  const s = await scriptedServer((cmd, conn) => {
    if (cmd.cmd !== 'publish') return undefined;
    if (conn.n === 1) {
      conn.ws.terminate(); // no reply, no close frame
      return false;
    }
    return { offset: 4, epoch: 'E', duplicate: true };
  });
  const c = newClient(s.url);
  const states = recordStates(c);
  await c.connect();
  assert.deepEqual(await within(5000, 'the publish', c.publish('room', 'hello')), { offset: 4, epoch: 'E', duplicate: true });
  const [c1, c2] = s.conns.items;
  const first = c1.commands.items.find((cmd) => cmd.cmd === 'publish');
  const retry = c2.commands.items.find((cmd) => cmd.cmd === 'publish');
  assert.ok(first.idempotency_key);
  assert.equal(retry.idempotency_key, first.idempotency_key);
  assert.equal(retry.data, 'hello');
  assert.ok(states.items.some((e) => e.state === 'disconnected' && e.reconnect));
});

test('publish retries turned off (publishRetry: false, or retry: false per call): no key, no retry', async () => {
  const s = await scriptedServer((cmd, conn) => {
    if (cmd.cmd !== 'publish') return undefined;
    if (cmd.channel === 'drop') {
      conn.ws.terminate();
      return false;
    }
    return { error: { code: 'unavailable', message: 'broker down' } };
  });
  const off = newClient(s.url, { publishRetry: false });
  const perCall = newClient(s.url);
  await off.connect();
  await perCall.connect();
  const err = await off.publish('room', 1).then(assert.fail, (e) => e);
  assert.equal(err.code, 'unavailable');
  assert.equal(err.idempotencyKey, undefined);
  await assert.rejects(perCall.publish('room', 2, { retry: false }), { code: 'unavailable' });
  await assert.rejects(off.publish('drop', 3), { code: 'disconnected' }, 'lost before the reply');
  await within(5000, 'reconnected', off.ping()); // waits for the new connection
  await assert.rejects(off.publish('room', 4, { idempotencyKey: 'k4' }), (e) => e.code === 'unavailable' && e.idempotencyKey === 'k4');

  const pubs = s.conns.items.flatMap((conn) => conn.commands.items).filter((cmd) => cmd.cmd === 'publish');
  assert.deepEqual(
    pubs.map((cmd) => [cmd.data, cmd.idempotency_key]).sort(),
    [
      [1, undefined],
      [2, undefined],
      [3, undefined],
      [4, 'k4'],
    ],
    'each sent once; a key only when the caller gave one',
  );
});

test('a publish that keeps failing is retried until the window ends, then rejects with the last error and its key', async () => {
  const s = await scriptedServer((cmd) => (cmd.cmd === 'publish' ? { error: { code: 'unavailable', message: 'broker down' } } : undefined));
  const c = newClient(s.url, { publishRetry: { window: 300 } });
  await c.connect();
  const err = await within(5000, 'the publish to fail', c.publish('room', 'x')).then(assert.fail, (e) => e);
  assert.ok(err instanceof HeraldError);
  assert.equal(err.code, 'unavailable');
  const pubs = s.conns.items[0].commands.items.filter((cmd) => cmd.cmd === 'publish');
  assert.ok(pubs.length >= 2, `${pubs.length} attempts`);
  assert.ok(pubs.every((cmd) => cmd.idempotency_key === err.idempotencyKey), 'one key for every attempt');
  assert.match(err.message, new RegExp(`after ${pubs.length} attempts`));
  assert.equal(c.state, 'connected');
});

test('rate_limited answers are retried, one command at a time after a refusal, until accepted; nothing ends', async () => {
  // The server refuses the first 7 commands after connect and answers each
  // 5 ms late. Once it has refused one, the client must send a command only
  // after the previous one's answer, new commands included: the server checks.
  let refusals = 7;
  let refusedOne = false;
  let after = 0; // commands received since the first refusal, unanswered
  let overlap = 0;
  const s = await scriptedServer((cmd, conn) => {
    if (cmd.cmd === 'connect') return undefined;
    const counted = refusedOne;
    if (counted && ++after > 1) overlap++;
    const refuse = refusals > 0;
    if (refuse) refusals--;
    setTimeout(() => {
      if (counted) after--;
      if (refuse) {
        refusedOne = true;
        conn.send({ id: cmd.id, error: { code: 'rate_limited', message: 'more than 5 messages per second; slow down' } });
      } else {
        conn.send(cmd.cmd === 'publish' ? { id: cmd.id, result: { offset: 1, epoch: 'E' } } : { id: cmd.id });
      }
    }, 5);
    return false;
  });
  const c = newClient(s.url);
  const states = recordStates(c);
  await c.connect();
  const errors = new Inbox();
  const subs = ['a', 'b', 'c'].map((ch) => c.subscribe(ch, { onError: errors.push }));
  const published = c.publish('a', 'hi');
  const pinged = c.ping();
  const stats = c.presenceStats('a');
  await waitFor(() => refusedOne, 5000, 'a refusal');
  const later = [c.ping(), c.publish('b', 'later'), c.ping()];
  await within(5000, 'every subscription', Promise.all(subs.map((sub) => sub.ready)));
  await within(5000, 'the later commands', Promise.all(later));
  assert.deepEqual(await within(5000, 'the publish', published), { offset: 1, epoch: 'E' });
  await within(5000, 'the ping', pinged);
  assert.deepEqual(await within(5000, 'the presence stats', stats), { clients: 0, users: 0 });
  assert.deepEqual(errors.items, []);
  assert.ok(subs.every((sub) => sub.state === 'subscribed'));
  assert.equal(refusals, 0);
  assert.equal(overlap, 0, 'after a refusal, one command at a time');

  const cmds = s.conns.items[0].commands.items;
  const pubs = cmds.filter((cmd) => cmd.cmd === 'publish' && cmd.data === 'hi');
  assert.ok(pubs.length >= 2 && pubs.every((cmd) => cmd.idempotency_key === pubs[0].idempotency_key));
  assert.equal(cmds.length, 1 + 9 + 7, 'connect, nine commands, seven of them again');
  assert.equal(s.conns.items.length, 1);
  assert.ok(states.items.every((e) => e.state !== 'disconnected'));
});

test('a request that the rate limit holds back past its timeout rejects with rate_limited', async (t) => {
  const s = await scriptedServer((cmd) => (cmd.cmd === 'history' ? { error: { code: 'rate_limited', message: 'slow down' } } : undefined));
  // The pause after the refusal: 0.99 of the way to 10 s, far past the timeout.
  t.mock.method(Math, 'random', () => 0.99);
  const c = newClient(s.url, { timeout: 200, backoff: { min: 10_000, max: 10_000 } });
  await c.connect();
  await assert.rejects(within(5000, 'the history', c.history('a')), { name: 'HeraldError', code: 'rate_limited' });
  assert.equal(s.conns.items[0].commands.items.filter((cmd) => cmd.cmd === 'history').length, 1);
  assert.equal(c.state, 'connected');
});

test('an unsub push ends the subscription: onUnsubscribed, state, no resubscribe after a reconnect', async () => {
  const s = await scriptedServer((cmd) => (cmd.channel === 'early' ? false : undefined));
  const c = newClient(s.url);
  await c.connect();
  const ended = new Inbox();
  const messages = new Inbox();
  const sub = c.subscribe('room', { onUnsubscribed: ended.push, onMessage: messages.push });
  await sub.ready;
  const kept = c.subscribe('kept');
  await kept.ready;
  const [c1] = s.conns.items;
  c1.send({ push: 'unsub', channel: 'room', code: 'server_unsubscribe', reason: 'unsubscribed by the server' });
  assert.deepEqual(await ended.count(1), [{ code: 'server_unsubscribe', reason: 'unsubscribed by the server' }]);
  assert.equal(sub.state, 'unsubscribed');
  assert.equal(c.getSubscription('room'), null);
  assert.equal(kept.state, 'subscribed');

  // Unsubscribed before the subscribe's reply: ready rejects.
  const early = c.subscribe('early', { onUnsubscribed: ended.push });
  await c1.commands.find((cmd) => cmd.channel === 'early', 5000, 'the subscribe');
  c1.send({ push: 'unsub', channel: 'early', code: 'server_unsubscribe', reason: 'no' });
  await assert.rejects(early.ready, { code: 'unsubscribed' });

  c1.ws.close(4003, 'come back');
  const c2 = (await s.conns.count(2, 5000, 'a reconnect'))[1];
  await within(5000, 'the resubscribe', kept.ready);
  await c.ping();
  assert.deepEqual(
    c2.commands.items.filter((cmd) => cmd.cmd === 'subscribe').map((cmd) => cmd.channel),
    ['kept'],
  );
  assert.equal(ended.items.length, 2);
  assert.deepEqual(messages.items, []);
});

test('rpc: method and data on the wire; resolves with the result\'s data (undefined without); refusals keep their code; never resent', async () => {
  const s = await scriptedServer((cmd) => {
    if (cmd.cmd !== 'rpc') return undefined;
    switch (cmd.method) {
      case 'echo':
        return { data: { got: cmd.data ?? null } };
      case 'empty':
        return {}; // the backend gave no data
      case 'bare':
        return undefined; // a reply without a result at all
      case 'refuse':
        return { error: { code: 'no_such_room', message: 'room 42 is gone' } };
      case 'hang':
        return false;
    }
    return { error: { code: 'not_enabled', message: 'no rpc backend' } };
  });
  const c = newClient(s.url);
  await c.connect();
  assert.deepEqual(await c.rpc('echo', { before: 42, list: [1, 'two'] }), { got: { before: 42, list: [1, 'two'] } });
  assert.deepEqual(await c.rpc('echo', 'a string'), { got: 'a string' });
  assert.deepEqual(await c.rpc('echo'), { got: null });
  assert.deepEqual(await c.rpc('echo', null), { got: null });
  assert.equal(await c.rpc('empty'), undefined);
  assert.equal(await c.rpc('bare'), undefined);
  await assert.rejects(c.rpc('refuse', 1), (err) => err instanceof HeraldError && err.code === 'no_such_room' && err.message === 'room 42 is gone');
  await assert.rejects(c.rpc('other'), { name: 'HeraldError', code: 'not_enabled' });

  const [c1] = s.conns.items;
  const rpcs = c1.commands.items.filter((cmd) => cmd.cmd === 'rpc');
  assert.deepEqual(rpcs[0], { id: rpcs[0].id, cmd: 'rpc', method: 'echo', data: { before: 42, list: [1, 'two'] } });
  assert.deepEqual(rpcs[2], { id: rpcs[2].id, cmd: 'rpc', method: 'echo' }, 'no data: no "data" field');
  assert.deepEqual(rpcs[3].data, null, 'null is data');

  // Bad input is refused before anything is sent.
  const sent = c1.commands.items.length;
  await assert.rejects(c.rpc(''), TypeError);
  await assert.rejects(c.rpc(7), TypeError);
  await assert.rejects(c.rpc('echo', 10n), /rpc data must be a JSON value/);
  await assert.rejects(c.rpc('echo', () => 1), TypeError);
  await assert.rejects(c.rpc('echo', new Uint8Array([1])), /not bytes/);
  await c.ping();
  assert.equal(c1.commands.items.length, sent + 1, 'only the ping was sent');

  // Lost before the reply: the outcome is unknown, so the client does not
  // call it again on the next connection; the app decides.
  const hanging = c.rpc('hang', { n: 1 });
  await c1.commands.find((cmd) => cmd.method === 'hang', 5000, 'the rpc');
  c1.ws.close(4003, 'go away for a moment');
  await assert.rejects(hanging, { name: 'HeraldError', code: 'disconnected' });
  const c2 = (await s.conns.count(2, 5000, 'a reconnect'))[1];
  await within(5000, 'connected again', c.connect());
  await c.ping();
  assert.deepEqual(c2.commands.items.map((cmd) => cmd.cmd), ['connect', 'ping']);

  c.disconnect();
  await assert.rejects(c.rpc('echo'), { name: 'HeraldError', code: 'disconnected' });
});

test('connectData: a value, or a function asked before every attempt; the connect result\'s data in the connected event', async () => {
  let n = 0;
  const s = await scriptedServer((cmd, conn) => (cmd.cmd === 'connect' ? { client: `client-${conn.n}`, data: { welcome: cmd.data ?? 'none' } } : undefined));

  const fixed = newClient(s.url, { connectData: { device: 'tablet' } });
  const fixedStates = recordStates(fixed);
  await fixed.connect();
  assert.deepEqual(s.conns.items[0].commands.items[0], { id: 1, cmd: 'connect', data: { device: 'tablet' } });
  assert.deepEqual(fixedStates.items.at(-1), { state: 'connected', clientId: 'client-1', data: { welcome: { device: 'tablet' } } });
  fixed.disconnect();

  const c = newClient(s.url, {
    connectData: async () => {
      n++;
      if (n === 2) throw new Error('the device id is not ready');
      return { attempt: n };
    },
  });
  const states = recordStates(c);
  await c.connect();
  const c2 = s.conns.items[1];
  assert.deepEqual(c2.commands.items[0].data, { attempt: 1 });
  assert.deepEqual(states.items.at(-1).data, { welcome: { attempt: 1 } });

  // Asked again for the reconnect: its failure is a failed attempt, retried.
  c2.ws.close(4003, 'go away for a moment');
  const failed = await states.find((e) => e.state === 'disconnected' && e.code === 1006, 5000, 'the failed attempt');
  assert.equal(failed.reason, 'connectData failed: the device id is not ready');
  assert.equal(failed.reconnect, true);
  const c3 = (await s.conns.count(3, 5000, 'a reconnect'))[2];
  await states.find((e) => e.state === 'connected' && e.clientId === 'client-3', 5000, 'connected again');
  assert.deepEqual(c3.commands.items[0].data, { attempt: 3 });
  assert.equal(n, 3);

  // Without data in the result, the event has no data field.
  const plain = await scriptedServer();
  const p = newClient(plain.url);
  const pStates = recordStates(p);
  await p.connect();
  assert.deepEqual(pStates.items.at(-1), { state: 'connected', clientId: 'client-1' });
  assert.deepEqual(plain.conns.items[0].commands.items[0], { id: 1, cmd: 'connect' });

  assert.throws(() => new Herald(s.url, { connectData: 1n }), /options.connectData must be a JSON value/);
  const bad = newClient(s.url, { connectData: () => 2n, timeout: 500 });
  const badStates = recordStates(bad);
  bad.connect();
  const ev = await badStates.find((e) => e.state === 'disconnected', 5000, 'the failed attempt');
  assert.match(ev.reason, /^connectData failed: connectData must be a JSON value/);
});

test('a subscribe push makes a server-side Subscription: announced before its publications, positions tracked, named in connect\'s subs on reconnect', async () => {
  const s = await scriptedServer((cmd, conn) => {
    if (cmd.cmd !== 'connect') return undefined;
    if (conn.n === 1) {
      // The server's connect hook gave two channels: news keeps history,
      // plain does not. Their pushes follow the reply, as Herald sends them.
      setImmediate(() => {
        conn.send({ push: 'subscribe', channel: 'news', offset: 5, epoch: 'E' });
        conn.send({ push: 'pub', channel: 'news', offset: 6, data: 'six' });
        conn.send({ push: 'subscribe', channel: 'plain' });
        conn.send({ push: 'pub', channel: 'plain', data: 'live' });
      });
    }
    return undefined;
  });
  const c = newClient(s.url);
  const announced = new Inbox();
  const messages = new Inbox();
  const subscribed = new Inbox();
  const ended = new Inbox();
  c.on('subscription', (sub, result) => {
    announced.push([sub, result]);
    sub.setHandlers({ onMessage: messages.push, onSubscribed: subscribed.push, onUnsubscribed: (info) => ended.push([sub.channel, info]) });
  });
  await c.connect();
  const own = c.subscribe('own');
  await own.ready;
  await messages.count(2, 5000, 'the publications after the pushes');

  const [[news, newsResult], [plain, plainResult]] = announced.items;
  assert.equal(announced.items.length, 2);
  assert.deepEqual(newsResult, { offset: 5, epoch: 'E' });
  assert.deepEqual(plainResult, {});
  assert.equal(news.channel, 'news');
  assert.equal(news.serverSide, true);
  assert.equal(own.serverSide, false);
  assert.equal(c.getSubscription('news'), news);
  assert.equal(news.state, 'subscribed');
  assert.deepEqual(await news.ready, { offset: 5, epoch: 'E' });
  assert.deepEqual(messages.items, [
    ['six', { channel: 'news', offset: 6, binary: false }],
    ['live', { channel: 'plain', offset: undefined, binary: false }],
  ]);
  assert.equal(news.offset, 6);
  assert.equal(news.epoch, 'E');
  assert.throws(() => c.subscribe('news'), { code: 'already_subscribed' });

  // The reconnect names them with their positions, and subscribes to its own only.
  const [c1] = s.conns.items;
  c1.ws.close(4003, 'go away for a moment');
  const c2 = (await s.conns.count(2, 5000, 'a reconnect'))[1];
  await c2.commands.count(2, 5000, 'connect and the resubscribe');
  assert.deepEqual(c2.commands.items[0].subs, { news: { offset: 6, epoch: 'E' }, plain: { offset: 0, epoch: '' } });
  assert.deepEqual(c2.commands.items.slice(1).map((cmd) => [cmd.cmd, cmd.channel]), [['subscribe', 'own']]);
  assert.equal(news.state, 'subscribing', 'until the server says');

  // The server makes news again, recovering, and no longer grants plain.
  c2.send({ push: 'subscribe', channel: 'news', offset: 8, epoch: 'E', recovered: true });
  c2.send({ push: 'pub', channel: 'news', offset: 7, data: 'seven' });
  c2.send({ push: 'pub', channel: 'news', offset: 8, data: 'eight' });
  c2.send({ push: 'unsub', channel: 'plain', code: 'not_restored', reason: 'not granted any more' });
  await ended.count(1, 5000, 'plain ended');
  assert.deepEqual(ended.items, [['plain', { code: 'not_restored', reason: 'not granted any more' }]]);
  assert.equal(plain.state, 'unsubscribed');
  assert.equal(c.getSubscription('plain'), null);
  await messages.count(4);
  assert.deepEqual(messages.items.slice(2).map(([d, m]) => [d, m.offset]), [['seven', 7], ['eight', 8]]);
  assert.equal(news.state, 'subscribed');
  assert.equal(news.offset, 8);
  assert.deepEqual(subscribed.items.at(-1), { offset: 8, epoch: 'E', recovered: true });
  assert.equal(announced.items.length, 2, 'the same Subscription: not announced again');

  // Ended by the server: never named again.
  c2.ws.close(4003, 'again');
  const c3 = (await s.conns.count(3, 5000, 'a second reconnect'))[2];
  await c3.commands.count(2);
  assert.deepEqual(c3.commands.items[0].subs, { news: { offset: 8, epoch: 'E' } });
  c3.send({ push: 'unsub', channel: 'news', code: 'server_unsubscribe', reason: 'gone' });
  await ended.count(2);
  c3.ws.close(4003, 'and again');
  const c4 = (await s.conns.count(4, 5000, 'a third reconnect'))[3];
  await c4.commands.count(2);
  assert.equal(c4.commands.items[0].subs, undefined, 'no server-side subscription left: no subs');
  assert.deepEqual(c4.commands.items.slice(1).map((cmd) => cmd.channel), ['own']);
});

test('a subscribe push for a channel the app subscribed to itself makes that Subscription server-side; the refused subscribe does not end it', async () => {
  const s = await scriptedServer((cmd, conn) => {
    if (cmd.cmd !== 'subscribe' || cmd.channel !== 'both') return undefined;
    // The server made it first (its connect hook named it) and refuses ours.
    conn.send({ push: 'subscribe', channel: 'both', offset: 3, epoch: 'E' });
    return { error: { code: 'already_subscribed', message: 'already subscribed' } };
  });
  const c = newClient(s.url);
  const announced = new Inbox();
  c.on('subscription', announced.push);
  const errors = new Inbox();
  const sub = c.subscribe('both', { onError: errors.push });
  await c.connect();
  assert.deepEqual(await within(5000, 'ready', sub.ready), { offset: 3, epoch: 'E' });
  await c.ping(); // after the subscribe's error reply
  assert.equal(sub.state, 'subscribed');
  assert.equal(sub.serverSide, true);
  assert.equal(c.getSubscription('both'), sub);
  assert.deepEqual(errors.items, []);
  assert.deepEqual(announced.items, [], 'the app knows this Subscription already');

  s.conns.items[0].ws.close(4003, 'go away for a moment');
  const c2 = (await s.conns.count(2, 5000, 'a reconnect'))[1];
  await c2.commands.count(1);
  await c.ping();
  assert.deepEqual(c2.commands.items[0].subs, { both: { offset: 3, epoch: 'E' } });
  assert.deepEqual(c2.commands.items.map((cmd) => cmd.cmd), ['connect', 'ping']);
});

test('a dropped push: onDropped in its place with the offsets; the position moves past them for the resubscribe', async () => {
  const s = await scriptedServer((cmd, conn) => {
    if (cmd.cmd !== 'subscribe') return undefined;
    return conn.n === 1 ? { offset: 0, epoch: 'E1' } : { offset: 7, epoch: 'E1', recovered: true };
  });
  const c = newClient(s.url);
  await c.connect();
  const events = new Inbox();
  const sub = c.subscribe('feed:x', {
    onMessage: (data, ctx) => events.push(['pub', ctx.offset]),
    onDropped: (info) => events.push(['dropped', info]),
  });
  await sub.ready;
  const [c1] = s.conns.items;
  for (const offset of [1, 2]) c1.send({ push: 'pub', channel: 'feed:x', offset, data: { n: offset } });
  c1.send({ push: 'dropped', channel: 'feed:x', count: 3, offsets: [[3, 5]] });
  for (const offset of [6, 7]) c1.send({ push: 'pub', channel: 'feed:x', offset, data: { n: offset } });
  c1.send({ push: 'dropped', channel: 'feed:x', count: 2 }); // a channel without history: a count only
  assert.deepEqual(await events.count(6), [
    ['pub', 1],
    ['pub', 2],
    ['dropped', { channel: 'feed:x', count: 3, offsets: [[3, 5]] }],
    ['pub', 6],
    ['pub', 7],
    ['dropped', { channel: 'feed:x', count: 2, offsets: [] }],
  ]);
  assert.equal(sub.offset, 7);

  // A dropped push that is the last thing received still moves the position.
  c1.send({ push: 'dropped', channel: 'feed:x', count: 2, offsets: [[8, 9]] });
  await events.count(7);
  assert.equal(sub.offset, 9);
  c1.ws.close(4003, 'come back');
  const c2 = (await s.conns.count(2, 5000, 'a reconnect'))[1];
  const resub = await c2.commands.find((cmd) => cmd.cmd === 'subscribe', 5000, 'the resubscribe');
  assert.deepEqual(resub.since, { offset: 9, epoch: 'E1' });
});

test('publish with a conflation key sends it as "key"', async () => {
  const s = await scriptedServer();
  const c = newClient(s.url);
  await c.connect();
  await c.publish('px:eu', { bid: 1 }, { key: 'AAPL', retry: false });
  const [c1] = s.conns.items;
  const cmd = await c1.commands.find((m) => m.cmd === 'publish', 5000, 'the publish');
  assert.equal(cmd.key, 'AAPL');
  assert.deepEqual(cmd.data, { bid: 1 });
});
