// Server-Sent Events: the client receiving over the eventsource package's
// EventSource from a real `herald serve` — SSE only, and as the fallback
// when a WebSocket cannot open — receive-only, with recovery across a
// reconnect.

import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { EventSource } from 'eventsource';

import { Herald } from '../index.js';
import { startHerald, cleanup } from './herald-server.js';
import { Inbox, recordStates, uniq, waitFor, within } from './util.js';

let server;
const clients = new Set();

before(async () => {
  server = await startHerald();
});

afterEach(() => {
  for (const c of clients) c.disconnect();
  clients.clear();
});

after(cleanup);

function newClient(url, options = {}) {
  const c = new Herald(url, { timeout: 5000, backoff: { min: 50, max: 300 }, EventSource, ...options });
  clients.add(c);
  return c;
}

/**
 * startFront starts an HTTP server in front of the test's herald serve:
 * refuse(req, res, n) answers the n-th request (from 1) itself and returns
 * true, or returns false to have it redirected (307, query kept) to the
 * server. It is closed after the test t; its sockets are in front.sockets.
 */
async function startFront(t, refuse) {
  const target = new URL(server.url).host;
  let n = 0;
  const front = http.createServer((req, res) => {
    if (refuse(req, res, ++n)) return;
    res.writeHead(307, { Location: `http://${target}${req.url}` });
    res.end();
  });
  front.sockets = new Set();
  await new Promise((resolve) => front.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise((resolve) => {
    for (const s of front.sockets) s.destroy();
    front.close(resolve);
  }));
  front.base = `127.0.0.1:${front.address().port}`;
  return front;
}

test('sse: true receives publications and binary payloads; publish is receive_only', async () => {
  const c = newClient(server.url, { sse: true });
  const states = recordStates(c);
  await within(5000, 'connect', c.connect());
  assert.equal(c.transport, 'sse');
  const ch = uniq('hist:sse-');
  const inbox = new Inbox();
  const sub = c.subscribe(ch, { onMessage: inbox.push });
  const res = await within(5000, 'subscribed', sub.ready);
  assert.equal(res.offset ?? 0, 0);
  assert.equal(typeof res.epoch, 'string');

  const ws = newClient(server.url);
  await within(5000, 'ws connect', ws.connect());
  await ws.publish(ch, { text: 'hello' });
  await ws.publish(ch, new Uint8Array([0, 1, 2, 255]));
  const got = await inbox.count(2);
  assert.deepEqual(got[0], [{ text: 'hello' }, { channel: ch, offset: 1, binary: false }]);
  assert.deepEqual([...got[1][0]], [0, 1, 2, 255]);
  assert.equal(got[1][1].binary, true);
  assert.equal(sub.offset, 2);

  await assert.rejects(sub.publish('no'), { name: 'HeraldError', code: 'receive_only' });
  await assert.rejects(c.rpc('x'), { code: 'receive_only' });
  assert.ok(states.items.some((s) => s.state === 'connected' && s.transport === 'sse'));
});

test('sse: fallback when the WebSocket cannot open; subscribe and unsubscribe reopen the stream', async () => {
  // A WebSocket URL that answers 404: the upgrade never happens, as behind
  // a proxy that breaks it.
  const base = new URL(server.url);
  const c = newClient(`ws://${base.host}/no-websocket-here`, { sse: 'fallback', sseUrl: `http://${base.host}/sse` });
  const a = uniq('chat:a-');
  const b = uniq('lobby-');
  const inboxA = new Inbox();
  const inboxB = new Inbox();
  const subA = c.subscribe(a, { onMessage: inboxA.push });
  await within(5000, 'connect over SSE', c.connect());
  assert.equal(c.transport, 'sse');
  await within(5000, 'a subscribed', subA.ready);
  const subB = c.subscribe(b, { onMessage: inboxB.push });
  await within(5000, 'b subscribed', subB.ready);

  const ws = newClient(server.url);
  await within(5000, 'ws connect', ws.connect());
  await ws.publish(a, 'to a');
  await ws.publish(b, 'to b');
  assert.deepEqual((await inboxA.count(1))[0], ['to a', { channel: a, offset: 1, binary: false }]);
  assert.equal((await inboxB.count(1))[0][0], 'to b');

  await subB.unsubscribe();
  await waitFor(() => subA.state === 'subscribed', 5000, 'a again, alone');
  await ws.publish(b, 'not for us');
  await ws.publish(a, 'a again');
  assert.equal((await inboxA.count(2))[1][0], 'a again');
  assert.equal(inboxB.items.length, 1);
});

test('sse: a lost stream reconnects and recovers what was published meanwhile, in order', async () => {
  const c = newClient(server.url, { sse: true });
  const ch = uniq('hist:rec-');
  const inbox = new Inbox();
  const sub = c.subscribe(ch, { onMessage: inbox.push, onRecoveryFailed: (r) => inbox.push(['recovery failed', r]) });
  await within(5000, 'connect', c.connect());
  await within(5000, 'subscribed', sub.ready);
  const ws = newClient(server.url);
  await within(5000, 'ws connect', ws.connect());
  await ws.publish(ch, 1);
  await inbox.count(1);

  // Drop the stream from the client's side, as a network loss would, and
  // publish while it is away.
  c._attemptFailed(c._generation, 'test: stream lost');
  for (const n of [2, 3, 4]) await ws.publish(ch, n);
  const got = await inbox.count(4);
  assert.deepEqual(
    got.map(([data]) => data),
    [1, 2, 3, 4],
  );
  assert.equal(sub.offset, 4);
});

test('sse: a stream refused with 503 (a draining node) is opened again, where EventSource alone gives up', async (t) => {
  // In front of the server: the first two requests for the stream are
  // answered 503, as a node that is draining answers them; an EventSource
  // fails for good on such an answer (readyState CLOSED), so the client
  // must open a new one itself. Later requests are sent on to the server's
  // /sse (a redirect, with their query).
  const paths = [];
  const front = await startFront(t, (req, res) => {
    paths.push(req.url);
    if (paths.length > 2) return false;
    res.writeHead(503, { 'Content-Type': 'text/plain' });
    res.end('Service Unavailable: server shutting down');
    return true;
  });

  const c = newClient(server.url, { sse: true, sseUrl: `http://${front.base}/sse` });
  const ch = uniq('hist:refused-');
  const inbox = new Inbox();
  const sub = c.subscribe(ch, { onMessage: inbox.push });
  await within(10000, 'connect after two refusals', c.connect());
  await within(5000, 'subscribed', sub.ready);
  assert.equal(c.transport, 'sse');
  assert.ok(paths.length >= 3, `requests: ${paths.join(' ')}`);
  assert.ok(paths.every((p) => p.startsWith('/sse?') && p.includes(`channel=${encodeURIComponent(ch)}`)), paths.join(' '));

  const ws = newClient(server.url);
  await within(5000, 'ws connect', ws.connect());
  await ws.publish(ch, 'after the refusals');
  assert.equal((await inbox.count(1))[0][0], 'after the refusals');
});

test('sse: a stream a node cannot take now (200, retry hint, close 1013) is not a connection, and the backoff grows', async (t) => {
  // A draining, stopping or full node answers a new stream with 200, a
  // retry: hint and a close event (1012, 1001, 1013), so that a browser's
  // EventSource tries again. The client must not take such a stream for a
  // connection: it would report connected, resolve connect() and start its
  // backoff over at every refusal, reconnecting at the shortest delay for
  // as long as the node refuses. Here the first three streams are refused
  // so; later ones are sent on to the server's /sse.
  const paths = [];
  const front = await startFront(t, (req, res) => {
    paths.push(req.url);
    if (paths.length > 3) return false;
    res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
    res.end('retry: 1000\nevent: close\ndata: {"code":1013,"reason":"Service Unavailable: too many connections"}\n\n');
    return true;
  });

  const c = newClient(server.url, { sse: true, sseUrl: `http://${front.base}/sse` });
  const states = recordStates(c);
  const ch = uniq('hist:later-');
  const inbox = new Inbox();
  const sub = c.subscribe(ch, { onMessage: inbox.push });
  await within(15000, 'connect after three refusals', c.connect());
  await within(5000, 'subscribed', sub.ready);
  assert.ok(paths.length >= 4, `requests: ${paths.join(' ')}`);

  const seen = states.items.map((s) => s.state);
  assert.equal(seen.indexOf('connected'), seen.lastIndexOf('connected'), `connected more than once: ${seen.join(' ')}`);
  const closes = states.items.filter((s) => s.state === 'disconnected').map((s) => s.code);
  assert.deepEqual(closes.slice(0, 3), [1013, 1013, 1013], seen.join(' '));
  const attempts = states.items.filter((s) => s.state === 'connecting').map((s) => s.attempt);
  assert.deepEqual(attempts.slice(0, 4), [0, 1, 2, 3], `each refusal is a failed attempt: ${attempts.join(' ')}`);

  const ws = newClient(server.url);
  await within(5000, 'ws connect', ws.connect());
  await ws.publish(ch, 'once taken');
  assert.equal((await inbox.count(1))[0][0], 'once taken');
});

test('sse: fallback stays on WebSocket once one has opened, when a later attempt is refused (a node restarting)', async (t) => {
  // In front of the server: upgrades are passed through to it, except while
  // refusing is set, when they get 503 as a restarting node answers them.
  const target = new URL(server.url);
  let refusing = 0;
  const front = await startFront(t, () => false);
  const sockets = front.sockets;
  front.on('upgrade', (req, sock, head) => {
    sockets.add(sock);
    if (refusing > 0) {
      refusing--;
      sock.end('HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    const up = net.connect(Number(target.port), target.hostname, () => {
      let raw = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) raw += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      up.write(raw + '\r\n');
      if (head.length) up.write(head);
      sock.pipe(up).pipe(sock);
    });
    sockets.add(up);
    up.on('error', () => sock.destroy());
    sock.on('error', () => up.destroy());
  });

  const c = newClient(`ws://${front.base}/ws`, { sse: 'fallback', sseUrl: `http://${front.base}/sse` });
  await within(5000, 'connect over WebSocket', c.connect());
  assert.equal(c.transport, 'websocket');

  // The node "restarts": its sockets are cut and the next two attempts refused.
  refusing = 2;
  for (const s of sockets) s.destroy();
  await waitFor(() => c.state !== 'connected', 5000, 'disconnected');
  await waitFor(() => c.state === 'connected', 10000, 'reconnected');
  assert.equal(refusing, 0, 'both refusals were met');
  assert.equal(c.transport, 'websocket', 'still on WebSocket after refused attempts');
  const ch = uniq('fallback-stays-');
  const inbox = new Inbox();
  const sub = c.subscribe(ch, { onMessage: inbox.push });
  await within(5000, 'subscribed', sub.ready);
  await within(5000, 'publish (not receive_only)', c.publish(ch, 'still two-way'));
  assert.equal((await inbox.count(1))[0][0], 'still two-way');
});
