// Herald's opt-in recovery for pusher-js (docs/pusher.md, "Recovery").
//
// Unchanged pusher-js resubscribes after a reconnect and gets only what is
// sent from then on (and, on cache channels, the last event). With this
// glue it gets everything it missed meanwhile, in order, when the app keeps
// history (PusherApp.HistorySize): it remembers the position (offset,
// epoch) that Herald adds to each event of a channel with history, and
// sends it as "herald_since" in pusher:subscribe when pusher-js
// resubscribes. A channel whose missed events are gone (history too short,
// or lost) gets the event "herald:unrecovered" with {reason} instead.
// It also sends the previous connection's socket id ("herald_socket_id"),
// so that what that connection was never sent (its own client events, and
// triggers that excluded it, as Laravel's toOthers() does) is not
// recovered either.
//
//   import Pusher from 'pusher-js';
//   import { enableRecovery } from './herald-recovery.js';
//   const pusher = enableRecovery(new Pusher(key, { wsHost, ... }));
//
// It uses pusher-js's public send_event and reads the raw messages of the
// connection's transport (pusher.connection.connection.transport), which
// pusher-js 7 and 8 have. Tested with pusher-js 8.6.0 (compat/pusher).
// No dependencies; works in browsers and Node. ES module; for a <script>
// tag without modules, copy the function.

export function enableRecovery(pusher) {
  const positions = new Map(); // channel -> {offset, epoch}: last event had
  const joined = new Map(); // channel -> the position its subscription began at

  const track = (raw) => {
    let m;
    try {
      m = JSON.parse(raw);
    } catch {
      return;
    }
    if (!m || typeof m.channel !== 'string') return;
    if (m.event === 'pusher_internal:subscription_succeeded') {
      if (!m.epoch) return; // no history on this channel
      const here = { offset: m.offset || 0, epoch: m.epoch };
      joined.set(m.channel, here);
      const had = positions.get(m.channel);
      if (!had || had.epoch !== m.epoch) positions.set(m.channel, here);
    } else if (m.event === 'herald:unrecovered') {
      const here = joined.get(m.channel);
      if (here) positions.set(m.channel, here);
    } else if (typeof m.offset === 'number') {
      const had = positions.get(m.channel);
      if (had && m.offset > had.offset) had.offset = m.offset;
    }
  };

  // The socket ids of this connection and of the one before it; shifted
  // when pusher-js has a new one (on 'connected', or at its resubscribe,
  // whichever comes first).
  let socketNow = null;
  let socketBefore = null;
  const shift = () => {
    const id = pusher.connection.socket_id;
    if (id && id !== socketNow) {
      socketBefore = socketNow;
      socketNow = id;
    }
  };

  let hooked = null;
  pusher.connection.bind('connected', () => {
    shift();
    const transport = pusher.connection.connection && pusher.connection.connection.transport;
    if (transport && transport !== hooked) {
      hooked = transport;
      transport.bind('message', (ev) => track(ev.data));
    }
  });

  const send = pusher.send_event.bind(pusher);
  pusher.send_event = (name, data, channel) => {
    if (name === 'pusher:subscribe' && data && positions.has(data.channel)) {
      shift();
      data = { ...data, herald_since: positions.get(data.channel) };
      if (socketBefore) data.herald_socket_id = socketBefore;
    } else if (name === 'pusher:unsubscribe' && data) {
      positions.delete(data.channel);
      joined.delete(data.channel);
    }
    return send(name, data, channel);
  };
  return pusher;
}
