// The demo chat page: pick a name and a channel, join, chat. Messages are
// publications of {"name": ..., "text": ...} on the channel; everyone on it,
// the sender included, receives each one from the server, so what the page
// shows is what the channel carried.
//
// On joining, the page shows the channel's recent messages (its history)
// and who is in the room (its presence, kept up to date by join and leave
// pushes): `herald serve` keeps both for chat:* channels by default. On a
// channel whose namespace keeps neither, the page shows live messages only.
//
// Presence gives client ids; the names people typed travel on a side
// channel, "<channel>/who" (the same namespace, so the same permissions):
// each page says {client, name} there when it joins and whenever someone
// else joins, so that a newcomer learns every name. The demo server is open,
// so these names are what pages claim, not identities.
//
// It runs on @heraldhq/client, Herald's JavaScript client: the server answers
// herald-client.js with clients/js/index.js itself (package web serves it
// from package jsclient). The client reconnects with backoff and
// resubscribes by itself; this page only shows what it reports.
//
// User data is only ever put in the page with textContent, never as HTML.

import { Herald } from './herald-client.js';

const MAX_MESSAGES = 500; // older ones are dropped from the page
const MAX_NAME = 32;
const HISTORY_SHOWN = 50; // recent messages shown on joining

// A channel name, per PROTOCOL.md ("Channels"): 1 to 255 of these characters.
const CHANNEL_RE = /^[A-Za-z0-9_\-.:@#,=/!]{1,255}$/;
const CHANNEL_HINT = 'Use 1-255 of A-Z a-z 0-9 _ - . : @ # , = / !';

const $ = (id) => document.getElementById(id);
const ui = {
  joinForm: $('join-form'),
  name: $('name'),
  channel: $('channel'),
  join: $('join'),
  status: $('status'),
  roomTitle: $('room-title'),
  messages: $('messages'),
  empty: $('empty'),
  peopleBar: $('people-bar'),
  peopleCount: $('people-count'),
  people: $('people'),
  sendForm: $('send-form'),
  text: $('text'),
  send: $('send'),
};

let client = null; // a Herald, made on the first join
let conn = { state: 'idle' }; // the client's last state event
let everConnected = false;
// While the page is away from the server: the close that ended the last
// connection (or the first failed attempt), the reason shown until it is back.
let lost = null;
let me = '';
let channel = ''; // the channel joined, or being joined
let sub = null; // its Subscription
let joined = false; // whether sub has been subscribed once (later ones are rejoins)
let who = null; // the Subscription to channel + '/who', where pages say their names
let present = new Set(); // client ids in the channel (its presence)
let names = new Map(); // client id -> the name that page said
let sending = false; // a publish is in flight: the draft typed meanwhile is not it

// Close codes, as a person would put them.
const CLOSE_REASONS = {
  1001: 'the server is restarting',
  1006: 'the connection was lost',
  1008: 'the server refused this page',
  1009: 'a message was too large',
  1011: 'the server hit an error',
  1012: 'the server is restarting',
  4001: 'this page fell behind',
  4002: 'the connection timed out',
  4003: 'the server disconnected this page',
  4004: 'the session expired',
};

function closeReason({ code, reason }) {
  if (code === 1006 && !everConnected) return 'the server cannot be reached';
  return CLOSE_REASONS[code] ?? (reason || `the connection closed (${code})`);
}

function storage(key, value) {
  try {
    if (value === undefined) return localStorage.getItem(key) ?? '';
    localStorage.setItem(key, value);
  } catch {
    // Storage may be disabled; remembering is only a convenience.
  }
  return '';
}

function setStatus(state, text) {
  ui.status.dataset.state = state;
  ui.status.textContent = text;
  const live = state === 'connected' && sub !== null;
  ui.text.disabled = !live;
  ui.send.disabled = !live || sending;
}

/** Shows the connection's state, and allows sending only when connected and joined. */
function renderStatus() {
  switch (client ? conn.state : 'idle') {
    case 'connecting':
      if (lost) setStatus('reconnecting', `Disconnected: ${closeReason(lost)}. Reconnecting…`);
      else setStatus('connecting', 'Connecting…');
      break;
    case 'connected':
      if (sub && sub.state !== 'subscribed') {
        setStatus('joining', `${joined ? 'Rejoining' : 'Joining'} ${channel}…`);
      } else {
        setStatus('connected', sub ? `Connected as ${me}` : 'Connected. Join a channel to chat.');
      }
      break;
    case 'disconnected':
      if (conn.reconnect) {
        const secs = Math.round((conn.delay ?? 0) / 1000);
        const when = secs >= 1 ? ` in ${secs}s` : '';
        setStatus('reconnecting', `Disconnected: ${closeReason(lost ?? conn)}. Reconnecting${when}…`);
      } else {
        // The server asked the page not to come back by itself (or there is
        // no WebSocket at all): only the person can decide to try again.
        setStatus('closed', `Disconnected: ${closeReason(conn)}. Press Join to reconnect.`);
      }
      break;
    default:
      setStatus('idle', 'Not connected');
  }
}

function nearBottom() {
  const m = ui.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < 48;
}

function append(li) {
  const stick = nearBottom();
  ui.messages.append(li);
  while (ui.messages.childElementCount > MAX_MESSAGES) ui.messages.firstElementChild.remove();
  ui.empty.hidden = true;
  if (stick) ui.messages.scrollTop = ui.messages.scrollHeight;
}

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function timeElement() {
  const now = new Date();
  const t = el('time', 'time', now.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }));
  t.dateTime = now.toISOString();
  return t;
}

/** A stable colour per name, so that speakers are easy to tell apart. */
function hue(name) {
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return h % 360;
}

/**
 * The list item for a publication: a message, or a notice for anything else
 * someone published to the channel. received: when it arrived, or null for
 * one from history (when it was sent is not known).
 */
function messageElement(data, { binary }, received) {
  if (binary) return noticeElement(`Unrecognised message: ${data.length} bytes of binary data`, received);
  if (data === null || typeof data !== 'object' || typeof data.name !== 'string' || typeof data.text !== 'string') {
    // Someone published something else to this channel: show it, as text.
    return noticeElement(`Unrecognised message: ${JSON.stringify(data)}`, received);
  }
  const li = el('li', 'message');
  if (data.name === me) li.classList.add('mine');
  li.style.setProperty('--hue', hue(data.name));
  const meta = el('div', 'meta');
  meta.append(el('span', 'name', data.name));
  if (received) meta.append(timeElement());
  li.append(meta, el('p', 'text', data.text));
  return li;
}

function noticeElement(text, received = true) {
  const li = el('li', 'notice');
  li.append(el('span', 'notice-text', text));
  if (received) li.append(timeElement());
  return li;
}

function showMessage(data, info) {
  append(messageElement(data, info, true));
}

function showNotice(text) {
  const li = noticeElement(text);
  append(li);
  return li;
}

/**
 * Shows the channel's recent messages above before (the "You joined"
 * notice): those up to res, the subscribe result's position, so that none
 * is shown twice (the later ones arrive as publications). s is the
 * subscription they are for; a join elsewhere meanwhile drops them.
 */
async function showHistory(s, res, before) {
  const upTo = res.offset ?? 0;
  if (res.epoch === undefined || upTo === 0) return; // no history here, or nothing in it yet
  let h;
  try {
    h = await client.history(s.channel, { limit: HISTORY_SHOWN, reverse: true });
  } catch (err) {
    if (s === sub && err.code !== 'not_enabled' && err.code !== 'permission_denied') {
      showNotice(`Could not load earlier messages: ${err.message}`);
    }
    return;
  }
  if (s !== sub || !before.isConnected || h.epoch !== res.epoch) return;
  const earlier = h.publications.filter((p) => p.offset <= upTo).reverse();
  if (earlier.length === 0) return;
  const stick = nearBottom();
  for (const p of earlier) {
    const li = messageElement(p.data, p, null);
    li.classList.add('history');
    before.before(li);
  }
  const mark = noticeElement(`${earlier.length} earlier message${earlier.length === 1 ? '' : 's'}`, false);
  mark.classList.add('history-mark');
  ui.messages.firstElementChild.before(mark);
  while (ui.messages.childElementCount > MAX_MESSAGES) ui.messages.firstElementChild.remove();
  if (stick) ui.messages.scrollTop = ui.messages.scrollHeight;
}

/** Shows who is in the room: one chip per client present, by the name it said. */
function renderPeople() {
  ui.peopleBar.hidden = sub === null || present.size === 0;
  const people = [...present].map((id) => ({ id, name: names.get(id), you: id === client?.clientId }));
  people.sort((a, b) => (a.name ?? '\uffff').localeCompare(b.name ?? '\uffff') || a.id.localeCompare(b.id));
  ui.peopleCount.textContent = `${people.length} here:`;
  ui.people.replaceChildren(...people.map((p) => {
    const li = el('li', p.name === undefined ? 'person anonymous' : 'person', p.name ?? 'someone');
    li.dataset.client = p.id;
    if (p.name !== undefined) li.style.setProperty('--hue', hue(p.name));
    if (p.you) li.append(el('span', 'you', ' (you)'));
    return li;
  }));
}

/** Reads the channel's presence again (on joining, and after each reconnect). */
async function loadPresence(s) {
  let res;
  try {
    res = await client.presence(s.channel);
  } catch {
    // not_enabled (no presence in this namespace), permission_denied, or
    // the connection went: the list stays as it is (hidden when empty).
    return;
  }
  if (s !== sub) return;
  present = new Set(Object.keys(res.clients));
  renderPeople();
}

/** Says this page's name on the who channel (not awaited: best effort). */
function sayName() {
  const id = client?.clientId;
  if (!who || !id) return;
  names.set(id, me);
  renderPeople();
  who.publish({ client: id, name: me }).catch(() => {});
}

/** Subscribes to the side channel where pages say their names. */
function subscribeWho(name) {
  const w = client.subscribe(name, {
    onMessage(data) {
      if (w !== who || data === null || typeof data !== 'object') return;
      if (typeof data.client !== 'string' || typeof data.name !== 'string' || !data.name) return;
      names.set(data.client, data.name.slice(0, MAX_NAME));
      renderPeople();
    },
    onError() {
      // Refused (a namespace whose permissions differ for '/who'?): the
      // list then shows "someone" for others. Nothing else depends on it.
    },
  });
  return w;
}

function onState(ev) {
  const wasConnected = conn.state === 'connected';
  conn = ev;
  if (ev.state === 'connected') {
    lost = null;
    everConnected = true;
  } else if (ev.state === 'disconnected' && ev.reconnect) {
    if (wasConnected) {
      lost = ev;
      showNotice('Connection lost. Reconnecting…');
    } else {
      lost ??= ev; // an attempt failed: keep the first reason
    }
  } else if (ev.state === 'disconnected' && wasConnected) {
    showNotice(`Disconnected: ${closeReason(ev)}.`);
  }
  renderStatus();
}

function ensureClient() {
  if (!client) {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    client = new Herald(`${scheme}//${location.host}/ws`);
    client.on('state', onState);
  }
  if (client.state === 'disconnected' && !conn.reconnect) {
    // The first join, or a join after the client stopped for good. (Not
    // awaited: connect() handles its own rejection, and the state events
    // tell the page everything.)
    lost = null;
    client.connect();
  }
  return client;
}

/** Subscribes to name; the page shows its messages until another join replaces it. */
function subscribe(name) {
  const s = client.subscribe(name, {
    onMessage(data, info) {
      if (s === sub) showMessage(data, info);
    },
    onJoin(info) {
      if (s !== sub) return;
      present.add(info.client);
      renderPeople();
      // Someone new: tell them who this page is.
      if (joined && info.client !== client.clientId) sayName();
    },
    onLeave(info) {
      if (s !== sub) return;
      present.delete(info.client);
      names.delete(info.client);
      renderPeople();
    },
    onSubscribed(res) {
      if (s !== sub) return;
      // A new connection has a new client id: read presence again, and
      // say this page's name under it.
      loadPresence(s);
      sayName();
      if (joined) {
        // A resubscribe after a reconnect: say whether anything was missed.
        if (res.recovered === true) showNotice('Reconnected. Nothing was missed.');
        else if (res.recovered === false) showNotice('Reconnected. Messages sent meanwhile may be missing.');
        else showNotice('Reconnected. Messages sent while disconnected are not shown.');
        renderStatus();
        return;
      }
      joined = true;
      showHistory(s, res, showNotice(`You joined ${name} as ${me}.`));
      ui.join.textContent = 'Update';
      renderStatus();
      ui.text.focus();
    },
    onError(err) {
      // The server refused the subscription (a namespace it does not
      // serve, no permission): it has ended.
      if (s !== sub) return;
      showNotice(`${joined ? 'Removed from' : 'Could not join'} ${name}: ${err.message}`);
      leave();
    },
  });
  return s;
}

/** Leaves the current channel, if any. */
function leave() {
  const s = sub;
  const w = who;
  sub = null;
  who = null;
  joined = false;
  channel = '';
  present = new Set();
  names = new Map();
  renderPeople();
  if (w && w.state !== 'unsubscribed') w.unsubscribe().catch(() => {});
  ui.roomTitle.textContent = 'No channel joined';
  ui.join.textContent = 'Join';
  // The subscription ends here at once; an error in the reply changes nothing.
  if (s && s.state !== 'unsubscribed') s.unsubscribe().catch(() => {});
  renderStatus();
}

function join(ev) {
  ev.preventDefault();
  const name = ui.name.value.trim();
  const next = ui.channel.value.trim();
  if (!name || name.length > MAX_NAME) {
    ui.name.setCustomValidity(`Use 1 to ${MAX_NAME} characters.`);
    ui.name.reportValidity();
    return;
  }
  ui.name.setCustomValidity('');
  if (!CHANNEL_RE.test(next)) {
    ui.channel.setCustomValidity(CHANNEL_HINT);
    ui.channel.reportValidity();
    return;
  }
  ui.channel.setCustomValidity('');
  me = name;
  storage('herald.name', name);
  storage('herald.channel', next);
  ensureClient();
  if (next === channel) {
    sayName(); // a new name only
    renderStatus();
    return;
  }
  leave();
  channel = next;
  ui.roomTitle.textContent = `#${next}`;
  ui.messages.replaceChildren();
  // The who channel first: the client subscribes in this order (after a
  // reconnect too), so this page hears the names others say when they see
  // its join on the channel.
  who = subscribeWho(`${next}/who`);
  sub = subscribe(next); // subscribes now if connected, else once connected
  renderStatus();
}

async function send(ev) {
  ev.preventDefault();
  const typed = ui.text.value;
  const text = typed.trim();
  if (!text || !sub || sending) return;
  sending = true;
  ui.send.disabled = true;
  try {
    await sub.publish({ name: me, text });
    // Clear what was sent, not a draft typed while it was on its way.
    if (ui.text.value === typed) ui.text.value = '';
  } catch (err) {
    showNotice(`Not sent: ${err.message}`);
  } finally {
    sending = false;
    renderStatus();
    if (!ui.text.disabled) ui.text.focus();
  }
}

ui.name.value = storage('herald.name');
ui.channel.value = storage('herald.channel') || ui.channel.value;
ui.joinForm.addEventListener('submit', join);
ui.sendForm.addEventListener('submit', send);
ui.name.addEventListener('input', () => ui.name.setCustomValidity(''));
ui.channel.addEventListener('input', () => ui.channel.setCustomValidity(''));
renderStatus();
(ui.name.value ? ui.join : ui.name).focus();
