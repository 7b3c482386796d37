// Two Herald nodes joined by Redis or NATS (the Go test picks): pusher-js
// clients on node A get what is triggered on node B, presence spans both,
// and a client event sent on B reaches A.
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { connect, disconnectAll, waitFor, once, subscribed, op } from './common.mjs';

const A = process.env.HERALD_URL_A, B = process.env.HERALD_URL_B;
afterEach(disconnectAll);

test('an event triggered on node B reaches a client on node A', async () => {
  const a = connect({ url: A });
  const ch = await subscribed(a, 'orders');
  // The first subscription on A may reach the broker a moment after
  // pusher-js hears subscription_succeeded: trigger until one arrives.
  const got = [];
  ch.bind('created', (d) => got.push(d));
  await waitFor(async () => {
    if (got.length) return true;
    await op('trigger', { channels: ['orders'], event: 'created', data: JSON.stringify({ from: 'B' }) }, B);
    await new Promise((r) => setTimeout(r, 50));
    return got.length > 0;
  }, 'an event from node B');
  assert.deepEqual(got[0], { from: 'B' });
});

test('presence and client events across the nodes', async () => {
  const alice = connect({ url: A, user: 'alice' });
  const room = await subscribed(alice, 'presence-room');
  const added = once(room, 'pusher:member_added');
  const bob = connect({ url: B, user: 'bob' });
  const broom = await subscribed(bob, 'presence-room');
  assert.equal((await added).id, 'bob');
  await waitFor(() => broom.members.count === 2, 'bob to see both members');
  const typing = once(room, 'client-typing');
  broom.trigger('client-typing', { who: 'bob' });
  assert.deepEqual(await typing, { who: 'bob' });
  const removed = once(room, 'pusher:member_removed');
  bob.disconnect();
  assert.equal((await removed).id, 'bob');
});
