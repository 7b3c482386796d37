// pusher-js 8.6.0, unmodified, against Herald's Pusher endpoint (Node).
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { connect, disconnectAll, waitFor, once, connected, subscribed, op, seen } from './common.mjs';
import { enableRecovery } from '../../clients/pusher/herald-recovery.js';

afterEach(disconnectAll);

test('connects with a Pusher socket id', async () => {
  const p = connect();
  const id = await connected(p);
  assert.match(id, /^\d+\.\d+$/);
});

test('public channel: trigger, and trigger excluding a socket', async () => {
  const a = connect(), b = connect();
  const [ca, cb] = [await subscribed(a, 'orders'), await subscribed(b, 'orders')];
  const got = [once(ca, 'created'), once(cb, 'created')];
  await op('trigger', { channels: ['orders'], event: 'created', data: JSON.stringify({ id: 1 }) });
  for (const d of await Promise.all(got)) assert.deepEqual(d, { id: 1 });

  const aGot = [];
  ca.bind('only-b', (d) => aGot.push(d));
  ca.bind('both', (d) => aGot.push(d));
  const bBoth = once(cb, 'both');
  const bOnly = once(cb, 'only-b');
  await op('trigger', { channels: ['orders'], event: 'only-b', data: 'x', exclude: a.connection.socket_id });
  await op('trigger', { channels: ['orders'], event: 'both', data: 'y' });
  assert.equal(await bOnly, 'x');
  await bBoth;
  await waitFor(() => aGot.length === 1, 'a to get "both"');
  assert.deepEqual(aGot, ['y'], 'the excluded socket got only the event after');
});

test('private channel: auth by the app endpoint, refusals', async () => {
  const p = connect({ user: 'alice' });
  await subscribed(p, 'private-orders');
  // The app's endpoint says no (403).
  const refused = p.subscribe('private-forbidden');
  const err = await once(refused, 'pusher:subscription_error');
  assert.equal(err.status, 403);
  // The endpoint answers a signature Herald refuses (another secret).
  const forged = connect({ extra: { channelAuthorization: { customHandler: ({ socketId, channelName }, cb) => cb(null, { auth: 'compat-key:' + '00'.repeat(32) }) } } });
  const ch = forged.subscribe('private-orders');
  const e2 = await once(ch, 'pusher:subscription_error');
  assert.equal(e2.type, 'AuthError');
  assert.equal(e2.status, 401);
  assert.equal(ch.subscribed, false);
});

test('encrypted channel: relayed untouched', async () => {
  const p = connect({ user: 'alice' });
  // No shared secret here: the raw event, as the server relays it, is
  // what an encrypted channel would decrypt; bind at the connection.
  await connected(p);
  const msgs = [];
  p.connection.bind('message', (m) => m.channel === 'private-encrypted-x' && msgs.push(m));
  p.send_event('pusher:subscribe', { channel: 'private-encrypted-x', auth: await authFor(p, 'private-encrypted-x') });
  await waitFor(() => msgs.some((m) => m.event === 'pusher_internal:subscription_succeeded'), 'the encrypted subscription');
  const payload = JSON.stringify({ nonce: 'bm9uY2U=', ciphertext: 'Y2lwaGVy' });
  await op('trigger', { channels: ['private-encrypted-x'], event: 'secret', data: payload });
  await waitFor(() => msgs.some((m) => m.event === 'secret'), 'the encrypted event');
  assert.deepEqual(msgs.find((m) => m.event === 'secret').data, JSON.parse(payload));
});

async function authFor(p, channel) {
  const body = new URLSearchParams({ socket_id: p.connection.socket_id, channel_name: channel, user: 'alice' });
  const res = await fetch(process.env.HERALD_URL + '/broadcasting/auth', { method: 'POST', body });
  return (await res.json()).auth;
}

test('presence: members, member_added with info, member_removed', async () => {
  const alice = connect({ user: 'alice' });
  const room = await subscribed(alice, 'presence-room');
  assert.equal(room.members.count, 1);
  assert.equal(room.members.me.id, 'alice');
  const added = once(room, 'pusher:member_added');
  const bob = connect({ user: 'bob' });
  const broom = await subscribed(bob, 'presence-room');
  const m = await added;
  assert.equal(m.id, 'bob');
  assert.deepEqual(m.info, { name: 'BOB' });
  assert.equal(broom.members.count, 2);
  assert.deepEqual(broom.members.get('alice').info, { name: 'ALICE' });
  const removed = once(room, 'pusher:member_removed');
  bob.disconnect();
  assert.equal((await removed).id, 'bob');
  assert.equal(room.members.count, 1);
});

test('client events: relayed, not echoed, seen by Herald clients; refused when the app disables them', async () => {
  await op('watch', { channel: 'private-chat' });
  const a = connect({ user: 'alice' }), b = connect({ user: 'bob' });
  const ca = await subscribed(a, 'private-chat');
  const cb = await subscribed(b, 'private-chat');
  const echoed = [];
  cb.bind('client-typing', (d) => echoed.push(d));
  const got = once(ca, 'client-typing');
  assert.equal(cb.trigger('client-typing', { who: 'bob' }), true);
  assert.deepEqual(await got, { who: 'bob' });
  // A server event after it reaches b: had b's own come back, it would be first.
  const after = once(cb, 'after');
  await op('trigger', { channels: ['private-chat'], event: 'after', data: '' });
  await after;
  assert.deepEqual(echoed, [], 'the sender does not get its own client event');
  await waitFor(async () => (await seen()).some((d) => d.pusher_event === 'client-typing'), 'the Herald client to see the event');
  const env = (await seen()).find((d) => d.pusher_event === 'client-typing');
  assert.deepEqual(JSON.parse(env.data), { who: 'bob' });

  const q = connect({ key: 'quiet-key', user: 'carol' });
  const cq = await subscribed(q, 'private-chat');
  const err = once(q.connection, 'error');
  cq.trigger('client-typing', {});
  const e = await err;
  assert.match(e.data.message, /client events/);
});

test('cache channels: cache_miss, then the last event', async () => {
  const p = connect();
  const empty = p.subscribe('cache-empty');
  await once(empty, 'pusher:cache_miss');
  await op('trigger', { channels: ['cache-prices'], event: 'price', data: '1' });
  await op('trigger', { channels: ['cache-prices'], event: 'price', data: '2' });
  const q = connect();
  const ch = q.subscribe('cache-prices');
  assert.equal(await once(ch, 'price'), 2);
});

test("Herald's own publish reaches pusher-js", async () => {
  const p = connect();
  const ch = await subscribed(p, 'news');
  const got = once(ch, 'herald:publication');
  await op('publish', { channel: 'news', data: JSON.stringify({ title: 'hi' }) });
  assert.deepEqual(await got, { title: 'hi' });
});

test('user sign-in and events sent to the user', async () => {
  const p = connect({ user: 'dave' });
  await connected(p);
  p.signin();
  await waitFor(() => p.user.serverToUserChannel && p.user.serverToUserChannel.subscribed, 'the user channel');
  const got = once(p.user, 'hello');
  await op('send_to_user', { user: 'dave', event: 'hello', data: JSON.stringify({ to: 'dave' }) });
  assert.deepEqual(await got, { to: 'dave' });
});

test('close codes: 4200 reconnects at once and resubscribes; 4009 does not reconnect', async () => {
  const p = connect();
  const first = await connected(p);
  const ch = await subscribed(p, 'orders');
  await op('disconnect', { socket: first, code: 4006 }); // Herald's resubscribe -> Pusher 4200
  await waitFor(() => p.connection.state === 'connected' && p.connection.socket_id !== first, 'the reconnect');
  await waitFor(() => ch.subscribed, 'the resubscription');
  const got = once(ch, 'again');
  await op('trigger', { channels: ['orders'], event: 'again', data: '' });
  await got;

  const q = connect();
  const id = await connected(q);
  const states = [];
  q.connection.bind('state_change', (s) => states.push(s.current));
  const err = once(q.connection, 'error');
  await op('disconnect', { socket: id, code: 4003 }); // Herald's disconnect -> Pusher 4009
  const e = await err;
  assert.equal(e.data.code, 4009);
  await waitFor(() => q.connection.state === 'disconnected', 'the disconnected state');
  // A client told not to reconnect stays down: a reconnect (4200 above
  // took milliseconds) would have shown by now.
  await new Promise((r) => setTimeout(r, 1500));
  assert.ok(!states.includes('connected'), 'no reconnect after 4009: ' + states.join(','));
});

test('recovery: the opt-in glue gets what a reconnecting client missed; plain pusher-js does not', async () => {
  const plain = connect();
  const glued = enableRecovery(connect());
  const got = { plain: [], glued: [] };
  for (const [name, p] of [['plain', plain], ['glued', glued]]) {
    const ch = await subscribed(p, 'ticks');
    ch.bind('tick', (d) => got[name].push(d));
  }
  await op('trigger', { channels: ['ticks'], event: 'tick', data: '1' });
  await waitFor(() => got.plain.length === 1 && got.glued.length === 1, 'tick 1');
  for (const p of [plain, glued]) {
    p.disconnect();
    await waitFor(() => p.connection.state === 'disconnected', 'the disconnect');
  }
  await op('trigger', { channels: ['ticks'], event: 'tick', data: '2' });
  await op('trigger', { channels: ['ticks'], event: 'tick', data: '3' });
  for (const p of [plain, glued]) {
    p.connect();
    await waitFor(() => p.channel('ticks').subscribed, 'the resubscription');
  }
  await waitFor(() => got.glued.length === 3, 'the recovered ticks');
  await op('trigger', { channels: ['ticks'], event: 'tick', data: '4' });
  await waitFor(() => got.plain.length === 2 && got.glued.length === 4, 'tick 4');
  assert.deepEqual(got.glued, [1, 2, 3, 4]);
  assert.deepEqual(got.plain, [1, 4]);
});

test('recovery: the glue does not bring back what was not sent to the old connection (a trigger excluding it)', async () => {
  const glued = enableRecovery(connect());
  const got = [];
  const ch = await subscribed(glued, 'ticks-own');
  ch.bind('tick', (d) => got.push(d));
  await op('trigger', { channels: ['ticks-own'], event: 'tick', data: '1' });
  await waitFor(() => got.length === 1, 'tick 1');
  // As Laravel's toOthers(): the page did this itself, so it is not sent.
  await op('trigger', { channels: ['ticks-own'], event: 'tick', data: '2', exclude: glued.connection.socket_id });
  glued.disconnect();
  await waitFor(() => glued.connection.state === 'disconnected', 'the disconnect');
  await op('trigger', { channels: ['ticks-own'], event: 'tick', data: '3' });
  glued.connect();
  await waitFor(() => glued.channel('ticks-own').subscribed, 'the resubscription');
  await op('trigger', { channels: ['ticks-own'], event: 'tick', data: '4' });
  await waitFor(() => got.length >= 3 && got[got.length - 1] === 4, 'tick 4');
  assert.deepEqual(got, [1, 3, 4]);
});
