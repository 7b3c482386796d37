// Helpers of the compat tests: pusher-js clients pointed at the Herald
// node the Go test started (HERALD_URL), the test hooks of its backend, and
// waits with deadlines (never a bare sleep for an outcome).
import Pusher from 'pusher-js';

export { Pusher };
export const base = process.env.HERALD_URL;

// options are pusher-js's options for the node at url, as a Laravel front
// end sets them: wsHost/wsPort instead of Pusher's cluster, the app's auth
// endpoints, and the user (a test param the backend signs for).
export function options(url, user, key = 'compat-key') {
  const u = new URL(url);
  return {
    cluster: 'mt1',
    wsHost: u.hostname,
    wsPort: Number(u.port),
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    channelAuthorization: { endpoint: url + '/broadcasting/auth', transport: 'ajax', params: { user, key } },
    userAuthentication: { endpoint: url + '/broadcasting/user-auth', transport: 'ajax', params: { user, key } },
  };
}

const clients = [];

export function connect({ user = 'anon', key = 'compat-key', url = base, extra = {} } = {}) {
  const p = new Pusher(key, { ...options(url, user, key), ...extra });
  clients.push(p);
  return p;
}

export function disconnectAll() {
  for (const p of clients.splice(0)) p.disconnect();
}

export async function waitFor(cond, what, ms = 10000) {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error('timed out waiting for ' + what);
    await new Promise((r) => setTimeout(r, 10));
  }
}

// once resolves with the data of the next `event` on target (a channel,
// the connection, or pusher.user), or rejects after ms.
export function once(target, event, ms = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('timed out waiting for ' + event)), ms);
    const cb = (data) => {
      clearTimeout(timer);
      target.unbind(event, cb);
      resolve(data);
    };
    target.bind(event, cb);
  });
}

export async function connected(p) {
  if (p.connection.state !== 'connected') await once(p.connection, 'connected');
  return p.connection.socket_id;
}

export async function subscribed(p, name) {
  const ch = p.subscribe(name);
  if (!ch.subscribed) await once(ch, 'pusher:subscription_succeeded');
  return ch;
}

// op calls a test hook of the backend: trigger, publish, send_to_user,
// disconnect, watch.
export async function op(name, body, url = base) {
  const res = await fetch(url + '/test/' + name, { method: 'POST', body: JSON.stringify(body) });
  if (!res.ok) throw new Error(name + ': ' + res.status + ' ' + (await res.text()));
}

export async function seen(url = base) {
  return (await fetch(url + '/test/seen')).json();
}
