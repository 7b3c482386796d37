// laravel-echo 2.5.0 on top of pusher-js 8.6.0, unmodified, against
// Herald's Pusher endpoint: what a Laravel front end runs.
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import Echo from 'laravel-echo';
import { Pusher, base, waitFor, op } from './common.mjs';

const echoes = [];
afterEach(() => {
  for (const e of echoes.splice(0)) e.disconnect();
});

// echo is configured as a Laravel app's resources/js/echo.js would be,
// with Herald's host instead of Pusher's, and the app's authEndpoint.
function echo(user) {
  const u = new URL(base);
  const e = new Echo({
    broadcaster: 'pusher',
    Pusher,
    key: 'compat-key',
    cluster: 'mt1',
    wsHost: u.hostname,
    wsPort: Number(u.port),
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    authEndpoint: base + '/broadcasting/auth',
    auth: { headers: {}, params: { user } },
  });
  echoes.push(e);
  return e;
}

test('private channel: listen to a broadcast event (namespaced and by its own name)', async () => {
  const e = echo('alice');
  const got = [];
  const ch = e.private('orders');
  ch.listen('OrderShipped', (d) => got.push(['ns', d]));
  ch.listen('.order.paid', (d) => got.push(['own', d]));
  await waitFor(() => ch.subscription.subscribed, 'the private subscription');
  await op('trigger', { channels: ['private-orders'], event: 'App\\Events\\OrderShipped', data: JSON.stringify({ order: 7 }) });
  await op('trigger', { channels: ['private-orders'], event: 'order.paid', data: JSON.stringify({ order: 8 }) });
  await waitFor(() => got.length === 2, 'both events');
  assert.deepEqual(got, [['ns', { order: 7 }], ['own', { order: 8 }]]);
});

test('private channel refused by the app: the error callback', async () => {
  const e = echo('alice');
  let err;
  e.private('forbidden-room').error((x) => (err = x));
  await waitFor(() => err, 'the subscription error');
  assert.equal(err.status, 403);
});

test('presence: here, joining, leaving, whisper', async () => {
  const alice = echo('alice');
  let here;
  const joined = [], left = [], whispers = [];
  alice.join('room')
    .here((users) => (here = users))
    .joining((u) => joined.push(u))
    .leaving((u) => left.push(u))
    .listenForWhisper('typing', (d) => whispers.push(d));
  await waitFor(() => here, 'here');
  assert.deepEqual(here, [{ name: 'ALICE' }]);

  const bob = echo('bob');
  let bobHere;
  const bobRoom = bob.join('room').here((users) => (bobHere = users));
  await waitFor(() => bobHere && joined.length === 1, 'bob in the room');
  assert.deepEqual(joined, [{ name: 'BOB' }]);
  assert.deepEqual(bobHere.map((u) => u.name).sort(), ['ALICE', 'BOB']);

  bobRoom.whisper('typing', { name: 'BOB' });
  await waitFor(() => whispers.length === 1, 'the whisper');
  assert.deepEqual(whispers, [{ name: 'BOB' }]);

  bob.leave('room');
  await waitFor(() => left.length === 1, 'bob leaving');
  assert.deepEqual(left, [{ name: 'BOB' }]);
});

test("a Laravel notification on the user's private channel", async () => {
  const e = echo('alice');
  const got = [];
  const ch = e.private('App.Models.User.1').notification((n) => got.push(n));
  await waitFor(() => ch.subscription.subscribed, 'the private subscription');
  // What Laravel's BroadcastNotificationCreated broadcasts.
  const n = { id: 'b3c1', type: 'App\\Notifications\\InvoicePaid', amount: 12 };
  await op('trigger', { channels: ['private-App.Models.User.1'], event: 'Illuminate\\Notifications\\Events\\BroadcastNotificationCreated', data: JSON.stringify(n) });
  await waitFor(() => got.length === 1, 'the notification');
  assert.deepEqual(got[0], n);
});
