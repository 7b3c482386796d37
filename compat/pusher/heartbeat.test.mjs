// An idle pusher-js client survives Herald's heartbeat (run with a ping
// every 100ms by the Go test): same socket, no reconnect, still receiving.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect, disconnectAll, connected, subscribed, once, op } from './common.mjs';

after(disconnectAll);

test('an idle client is not cut by the heartbeat', async () => {
  const p = connect();
  const id = await connected(p);
  const ch = await subscribed(p, 'idle');
  const states = [];
  p.connection.bind('state_change', (s) => states.push(s.current));
  // Twenty ping intervals and more than the pong timeout, idle: the
  // outcome is what is asserted after it, not the time.
  await new Promise((r) => setTimeout(r, 2000));
  assert.deepEqual(states, []);
  assert.equal(p.connection.socket_id, id);
  const got = once(ch, 'still');
  await op('trigger', { channels: ['idle'], event: 'still', data: 'here' });
  assert.equal(await got, 'here');
});
