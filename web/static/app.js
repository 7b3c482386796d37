// The demo chat page: pick a name and a channel, join, chat. Messages are
// publications of {"name": ..., "text": ...} on the channel; everyone on it,
// the sender included, receives each one from the server, so what the page
// shows is what the channel carried.
//
// User data is only ever put in the page with textContent, never as HTML.

import { HeraldClient, validChannel } from './herald.js';

const MAX_MESSAGES = 500; // older ones are dropped from the page
const MAX_NAME = 32;

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
  sendForm: $('send-form'),
  text: $('text'),
  send: $('send'),
};

let client = null;
let me = '';
let channel = '';
let connState = 'idle';
let connDetail = {}; // the last state event's detail: close code, retry delay

// The server's close codes, as a person would put them.
const CLOSE_REASONS = {
  1001: 'the server is restarting',
  1006: 'the connection was lost',
  1009: 'a message was too large',
  1011: 'the server hit an error',
  4001: 'this page fell behind',
  4002: 'the connection timed out',
  4003: 'the server disconnected this page',
};

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
  const live = state === 'connected';
  ui.text.disabled = !live;
  ui.send.disabled = !live;
}

function renderStatus() {
  const detail = connDetail;
  switch (connState) {
    case 'connecting':
      setStatus('connecting', 'Connecting…');
      break;
    case 'connected':
      setStatus('connected', `Connected as ${me}`);
      break;
    case 'reconnecting': {
      const why = CLOSE_REASONS[detail.code] ?? 'the connection closed';
      const secs = Math.max(1, Math.round((detail.delay ?? 0) / 1000));
      setStatus('reconnecting', `Disconnected: ${why}. Reconnecting in ${secs}s…`);
      break;
    }
    case 'closed':
      setStatus('closed', `Disconnected${detail.reason ? ': ' + detail.reason : ''}. Reload the page to reconnect.`);
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

function showMessage(data) {
  if (data === null || typeof data !== 'object' || typeof data.name !== 'string' || typeof data.text !== 'string') {
    // Someone published something else to this channel: show it, as text.
    showNotice(`Unrecognised message: ${JSON.stringify(data)}`);
    return;
  }
  const li = el('li', 'message');
  if (data.name === me) li.classList.add('mine');
  li.style.setProperty('--hue', hue(data.name));
  const meta = el('div', 'meta');
  meta.append(el('span', 'name', data.name), timeElement());
  li.append(meta, el('p', 'text', data.text));
  append(li);
}

function showNotice(text) {
  const li = el('li', 'notice');
  li.append(el('span', 'notice-text', text), timeElement());
  append(li);
}

function ensureClient() {
  if (client) return client;
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  client = new HeraldClient(`${scheme}//${location.host}/ws`);
  let prev = 'idle';
  let everConnected = false;
  client.addEventListener('state', (ev) => {
    connState = ev.detail.state;
    connDetail = ev.detail;
    renderStatus();
    if (connState === 'reconnecting' && prev === 'connected') {
      showNotice('Connection lost. Messages sent until it is back will not be shown.');
    }
    if (connState === 'connected') {
      if (everConnected) showNotice('Reconnected.');
      everConnected = true;
    }
    prev = connState;
  });
  client.addEventListener('publication', (ev) => {
    if (ev.detail.channel === channel) showMessage(ev.detail.data);
  });
  client.connect();
  return client;
}

async function join(ev) {
  ev.preventDefault();
  const name = ui.name.value.trim();
  const next = ui.channel.value.trim();
  if (!name || name.length > MAX_NAME) {
    ui.name.setCustomValidity(`Use 1 to ${MAX_NAME} characters.`);
    ui.name.reportValidity();
    return;
  }
  ui.name.setCustomValidity('');
  if (!validChannel(next)) {
    ui.channel.setCustomValidity('Use 1-255 of A-Z a-z 0-9 _ - . : @ # , = / !');
    ui.channel.reportValidity();
    return;
  }
  ui.channel.setCustomValidity('');
  me = name;
  storage('herald.name', name);
  storage('herald.channel', next);
  const c = ensureClient();
  renderStatus();
  if (next === channel) return; // a new name only
  const prev = channel;
  channel = next;
  ui.roomTitle.textContent = `#${next}`;
  ui.messages.replaceChildren();
  if (connState === 'connected') setStatus('joining', `Joining ${next}…`);
  try {
    if (prev) await c.unsubscribe(prev);
    await c.subscribe(next);
  } catch (err) {
    showNotice(`Could not join ${next}: ${err.message}`);
    return;
  } finally {
    renderStatus();
  }
  showNotice(`You joined ${next} as ${name}.`);
  ui.join.textContent = 'Update';
  if (!ui.text.disabled) ui.text.focus();
}

async function send(ev) {
  ev.preventDefault();
  const text = ui.text.value.trim();
  if (!text || !client || !channel) return;
  ui.send.disabled = true;
  try {
    await client.publish(channel, { name: me, text });
    ui.text.value = '';
  } catch (err) {
    showNotice(`Not sent: ${err.message}`);
  } finally {
    ui.send.disabled = connState !== 'connected';
    ui.text.focus();
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
