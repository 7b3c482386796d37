// Delta delivery (subscribe's delta option) against a real `herald serve`
// whose delta:* namespace sends fossil deltas (herald-server.js), and against a scripted server
// for what the real one does not do on demand: a delta on a base the client
// does not hold, and one whose checksum fails.

import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { WebSocketServer } from 'ws';
import { applyDelta, createDelta } from 'fossil-delta';

import { Herald } from '../index.js';
import { startHerald, cleanup } from './herald-server.js';
import { Inbox, uniq, within } from './util.js';

let server;
const cleanups = [];

before(async () => {
  server = await startHerald() // its delta:* namespace sends deltas;
});

afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

after(cleanup);

function newClient(url, options = {}) {
  const c = new Herald(url, { timeout: 5000, backoff: { min: 50, max: 500 }, ...options });
  cleanups.push(() => c.disconnect());
  return c;
}

/** An applyDelta that records each result, decoded. */
function countingApply() {
  const outputs = [];
  const fn = (base, delta) => {
    const out = applyDelta(base, delta);
    outputs.push(new TextDecoder().decode(out));
    return out;
  };
  return { fn, outputs };
}

/** n versions of a ~2 KB state, each a few fields away from the one before. */
function states(n) {
  const doc = { seq: 0, instruments: [] };
  for (let i = 0; i < 40; i++) doc.instruments.push({ symbol: `SYM${i}`, bid: 1000 + i, ask: 1001 + i, volume: i * 7 });
  const out = [];
  for (let i = 0; i < n; i++) {
    doc.seq = i;
    doc.instruments[(i * 7) % 40].bid += i;
    doc.instruments[(i * 13) % 40].volume += 3;
    out.push(structuredClone(doc));
  }
  return out;
}

test('deltas: applied transparently over a long run of small changes; only the client that asked gets them', { timeout: 60_000 }, async () => {
  const withApply = countingApply();
  const otherApply = countingApply();
  const a = newClient(server.url, { applyDelta: withApply.fn });
  const b = newClient(server.url, { applyDelta: otherApply.fn });
  await Promise.all([a.connect(), b.connect()]);
  const ch = uniq('delta:state-');
  const gotA = new Inbox();
  const gotB = new Inbox();
  const subA = a.subscribe(ch, { delta: true, onMessage: gotA.push });
  const subB = b.subscribe(ch, { onMessage: gotB.push });
  const resA = await within(5000, 'subscribe a', subA.ready);
  await within(5000, 'subscribe b', subB.ready);
  assert.equal(resA.delta, true, 'the server grants deltas');

  const want = states(120);
  assert.ok(JSON.stringify(want[0]).length > 2000, 'a ~2 KB state');
  for (const s of want) await b.publish(ch, s);
  for (const inbox of [gotA, gotB]) {
    const got = await inbox.count(want.length, 20_000);
    for (let i = 0; i < want.length; i++) assert.deepEqual(got[i][0], want[i], `publication ${i + 1}`);
  }
  // The first and every 32nd are full (120: 1, 32, 64, 96), the rest deltas,
  // each rebuilt to exactly the bytes published.
  assert.equal(withApply.outputs.length, 120 - 4);
  const published = new Set(want.map((s) => JSON.stringify(s)));
  for (const out of withApply.outputs) assert.ok(published.has(out), 'a delta rebuilds the published bytes');
  assert.equal(otherApply.outputs.length, 0, 'no delta to a client that did not ask');
});

test('deltas: binary payloads too; a namespace without deltas does not grant them', { timeout: 30_000 }, async () => {
  const apply = countingApply();
  const c = newClient(server.url, { applyDelta: apply.fn });
  await c.connect();
  const ch = uniq('delta:bin-');
  const got = new Inbox();
  await within(5000, 'subscribe', c.subscribe(ch, { delta: true, onMessage: got.push }).ready);
  const want = [];
  for (let i = 0; i < 10; i++) {
    const bytes = new Uint8Array(600).map((_, j) => (j * 7 + (j === 100 ? i : 0)) & 0xff);
    want.push(bytes);
    await c.publish(ch, bytes);
  }
  const items = await got.count(10);
  for (let i = 0; i < 10; i++) {
    assert.ok(items[i][0] instanceof Uint8Array);
    assert.deepEqual([...items[i][0]], [...want[i]]);
    assert.equal(items[i][1].binary, true);
  }
  assert.equal(apply.outputs.length, 9);

  const plain = await within(5000, 'subscribe hist', c.subscribe(uniq('hist:x-'), { delta: true }).ready);
  assert.equal(plain.delta, undefined);
});

test('deltas: subscribe with delta needs applyDelta', () => {
  const c = newClient(server.url);
  assert.throws(() => c.subscribe('delta:x', { delta: true }), TypeError);
  assert.throws(() => newClient(server.url, { applyDelta: 'yes' }), TypeError);
});

/** A scripted herald.v1 server: script(cmd, conn) answers each command. */
async function scriptedServer(script) {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, handleProtocols: () => 'herald.v1' });
  await once(wss, 'listening');
  const commands = [];
  wss.on('connection', (ws) => {
    const conn = { send: (m) => ws.send(typeof m === 'string' || m instanceof Uint8Array ? m : JSON.stringify(m)) };
    ws.on('message', (data) => {
      const cmd = JSON.parse(data.toString());
      commands.push(cmd);
      if (cmd.cmd === 'connect') conn.send({ id: cmd.id, result: { client: 'c1' } });
      else script(cmd, conn);
    });
  });
  cleanups.push(
    () =>
      new Promise((resolve) => {
        for (const ws of wss.clients) ws.terminate();
        wss.close(resolve);
      }),
  );
  return { url: `ws://127.0.0.1:${wss.address().port}/ws`, commands };
}

const enc = new TextEncoder();
const v = (i, pad = 'a') => `{"v":${i},"pad":"${pad.repeat(200 / pad.length)}"}`;
const pub = (off, data) => `{"push":"pub","channel":"delta:x","offset":${off},"data":${data}}`;
function deltaPush(off, from, to) {
  const header = enc.encode(`{"push":"pub","channel":"delta:x","offset":${off},"delta":true}\n`);
  const d = createDelta(enc.encode(from), enc.encode(to));
  const frame = new Uint8Array(header.length + d.length);
  frame.set(header);
  frame.set(d, header.length);
  return frame;
}

test('deltas: a broken base (offset gap, bad checksum) resubscribes from the last position', { timeout: 30_000 }, async () => {
  let subs = 0;
  const s = await scriptedServer((cmd, conn) => {
    if (cmd.cmd === 'unsubscribe') return conn.send({ id: cmd.id });
    if (cmd.cmd !== 'subscribe') return undefined;
    subs++;
    if (subs === 1) {
      conn.send({ id: cmd.id, result: { epoch: 'e', delta: true } });
      conn.send(pub(1, v(1)));
      conn.send(deltaPush(3, v(2), v(3))); // 2 never came
    } else if (subs === 2) {
      conn.send({ id: cmd.id, result: { offset: 3, epoch: 'e', recovered: true, delta: true } });
      conn.send(pub(2, v(2)));
      conn.send(pub(3, v(3)));
      conn.send(deltaPush(4, v(3), v(4)));
      conn.send(deltaPush(5, v(4, '0123456789'), v(5, '0123456789'))); // the wrong base: bad checksum
    } else {
      conn.send({ id: cmd.id, result: { offset: 5, epoch: 'e', recovered: true, delta: true } });
      conn.send(pub(5, v(5, '0123456789')));
    }
  });
  const c = newClient(s.url, { applyDelta });
  await c.connect();
  const got = new Inbox();
  c.subscribe('delta:x', { delta: true, onMessage: got.push });
  const items = await got.count(5);
  const want = [v(1), v(2), v(3), v(4), v(5, '0123456789')].map((x) => JSON.parse(x));
  assert.deepEqual(
    items.map((i) => i[0]),
    want,
  );
  assert.deepEqual(
    items.map((i) => i[1].offset),
    [1, 2, 3, 4, 5],
  );
  const cmds = s.commands.filter((x) => x.cmd !== 'connect');
  assert.deepEqual(
    cmds.map((x) => x.cmd),
    ['subscribe', 'unsubscribe', 'subscribe', 'unsubscribe', 'subscribe'],
  );
  assert.deepEqual(cmds[2].since, { offset: 1, epoch: 'e' });
  assert.deepEqual(cmds[4].since, { offset: 4, epoch: 'e' });
  for (const i of [0, 2, 4]) assert.equal(cmds[i].delta, 'fossil');
});
