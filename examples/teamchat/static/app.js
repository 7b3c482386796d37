// The team chat page. Everything it shows comes from the backend, through
// Herald:
//   - the backend's connect hook subscribes this connection to room:general
//     and users:online (server-side subscriptions): the page only attaches
//     its handlers when the client reports them ('subscription' event);
//   - the latest messages, and older ones, come from the backend's store by
//     RPC (messages.before); new ones as publications, in the stored form
//     the publish hook made ({id, user, text, at});
//   - the online list comes by RPC (users.online) and then as publications
//     on every change. Each carries a version: the newest wins, whichever
//     way it arrived first.
// Text is only ever set with textContent: a message is never HTML.

import { Herald } from './herald-client.js';

const $ = (id) => document.getElementById(id);
const GENERAL = 'room:general';
const ONLINE = 'users:online';

let client = null;
const shown = new Map(); // message id -> <li>, for de-duplication and ordering
let onlineVersion = -1;
let oldest = 0; // id of the oldest message shown, for "load older"

function showLogin(problem = '') {
  $('chat').hidden = true;
  $('me').hidden = $('logout').hidden = true;
  $('login-form').hidden = false;
  $('login-error').textContent = problem;
  $('name').focus();
}

function setStatus(state) {
  $('status').dataset.state = state;
  $('status').textContent = state === 'connected' ? 'online' : state;
}

/** Shows message m in id order, once. */
function addMessage(m) {
  if (shown.has(m.id)) return;
  const li = document.createElement('li');
  li.className = 'message';
  li.dataset.id = m.id;
  const user = document.createElement('span');
  user.className = 'user';
  user.textContent = m.user;
  const text = document.createElement('span');
  text.className = 'text';
  text.textContent = m.text;
  const time = document.createElement('time');
  time.dateTime = m.at;
  time.textContent = new Date(m.at).toLocaleTimeString();
  li.append(user, text, time);
  // The first shown message with a larger id is where it goes.
  let next = null;
  for (const [id, el] of shown) if (id > m.id && (next === null || id < Number(next.dataset.id))) next = el;
  $('messages').insertBefore(li, next);
  shown.set(m.id, li);
  if (oldest === 0 || m.id < oldest) oldest = m.id;
  if (next === null) li.scrollIntoView({ block: 'end' });
}

function setOnline(list) {
  if (list.version <= onlineVersion) return; // an older list, arrived late
  onlineVersion = list.version;
  $('online').replaceChildren(...list.users.map((u) => {
    const li = document.createElement('li');
    li.textContent = u;
    return li;
  }));
}

/** Asks the backend for up to 20 messages before id `before` (0: the latest). */
async function loadMessages(before) {
  const page = await client.rpc('messages.before', { before, limit: 20 });
  for (const m of page.messages) addMessage(m);
  $('older').hidden = !page.more;
}

async function startChat(name) {
  $('login-form').hidden = true;
  $('chat').hidden = false;
  $('me').textContent = name;
  $('me').hidden = $('logout').hidden = false;

  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  client = new Herald(`${scheme}//${location.host}/ws`);
  client.on('state', (ev) => setStatus(ev.state));
  client.on('subscription', (sub) => {
    if (sub.channel === GENERAL) {
      sub.setHandlers({
        onMessage: addMessage,
        // Herald's history could not fill the gap of a reconnect: ask the
        // store, which has everything.
        onRecoveryFailed: () => loadMessages(0).catch(showError),
      });
    } else if (sub.channel === ONLINE) {
      sub.setHandlers({ onMessage: setOnline });
    }
  });
  try {
    await client.connect();
  } catch (err) {
    // unauthorized: the session is gone (the server restarted, say).
    client = null;
    showLogin(err.code === 'unauthorized' ? 'Please log in again.' : `Could not connect: ${err.message}`);
    return;
  }
  // After connect, so both subscriptions exist: what changes from now on
  // arrives as publications, and these answers fill in what came before.
  await Promise.all([loadMessages(0), client.rpc('users.online').then(setOnline)]).catch(showError);
}

function showError(err) {
  $('error').dataset.code = err.code ?? '';
  $('error').textContent = err.message;
}

$('login-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const resp = await fetch('/login', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ name: $('name').value }),
  });
  if (!resp.ok) {
    $('login-error').textContent = await resp.text();
    return;
  }
  startChat((await resp.json()).name);
});

$('send-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const input = $('text');
  $('error').textContent = '';
  try {
    // Sent as typed: the backend checks it (bad_message when empty or too long).
    await client.publish(GENERAL, { text: input.value });
    input.value = '';
  } catch (err) {
    showError(err);
  }
});

$('older').addEventListener('click', () => loadMessages(oldest).catch(showError));

$('logout').addEventListener('click', async () => {
  client?.disconnect();
  client = null;
  shown.clear();
  oldest = 0;
  onlineVersion = -1;
  $('messages').replaceChildren();
  $('online').replaceChildren();
  setStatus('disconnected');
  await fetch('/logout', { method: 'POST' });
  showLogin();
});

const me = await (await fetch('/me')).json();
if (me.name) startChat(me.name);
else showLogin();
