// @heraldhq/client: a client for Herald's herald.v1 WebSocket protocol
// (PROTOCOL.md in the Herald repository is the contract this file follows).
//
// One file, no build step, no runtime dependency: it uses the platform's
// WebSocket (browsers, Deno, Bun, Node 22+) and loads the optional `ws`
// package only where there is none (Node 20).
//
// Shape of the code: a Herald owns at most one socket at a time. Every
// request gets an id and a promise that settles on the reply with that id,
// or on a timeout. When a socket is lost the client reconnects with backoff
// and resubscribes every Subscription from the last position it saw, so
// that the server can deliver what was missed (or say that it cannot).
// A command the server refuses for the rate (rate_limited: nothing was
// done) is sent again later, through a line that sends one command at a
// time and pauses after each refusal. A publish carries an idempotency key
// and is retried, with that key, when its outcome is unknown.
//
// Server-side subscriptions (made by the server: its connect hook or its
// API) arrive as `subscribe` pushes and become Subscriptions like the app's
// own. They differ on reconnect: the client does not subscribe to them
// again, it names them with their positions in connect's `subs`, and the
// server makes again those it still grants (a `subscribe` push each) and
// ends the others (an `unsub` push, not_restored).

export const SUBPROTOCOL = 'herald.v1';

/**
 * An error reply from the server (code is the protocol's code string, such as
 * "bad_channel"), or a local failure: "timeout", "disconnected" or
 * "unsubscribed". A failed publish also carries its idempotencyKey, if it
 * had one, so that the app can retry it safely.
 */
export class HeraldError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'HeraldError';
    this.code = code;
  }
}

const DEFAULT_TIMEOUT = 10_000;
const DEFAULT_BACKOFF = { min: 500, max: 20_000 };
// Well inside the server's idempotency window (2 minutes by default): a
// retry after the window could publish a second time.
const DEFAULT_PUBLISH_RETRY_WINDOW = 60_000;

// The server closes a client that keeps sending over its message rate with
// this code: come back after a backoff delay, and send less.
const CLOSE_RATE_LIMITED = 4007;

// The client drops a socket itself when an attempt or a subscribe takes too
// long; state events then report this code, as for any connection that ended
// without a close frame.
const ABNORMAL_CLOSURE = 1006;

// Close codes after which the server asks us not to come back by ourselves:
// 1008 (policy: too many connections for the user) and the protocol's
// 4500-4999. Every other code reconnects, 4007 (rate limited) included.
function isFinalClose(code) {
  return code === 1008 || (code >= 4500 && code <= 4999);
}

/**
 * Full-jitter exponential backoff: a uniformly random delay between 0 and
 * min·2^attempt, capped at max. The randomness spreads out the clients that a
 * server restart disconnected all at once, so they do not return together.
 */
function backoffDelay(attempt, { min, max }) {
  const ceiling = Math.min(max, min * 2 ** Math.min(attempt, 30));
  return Math.floor(Math.random() * ceiling);
}

// Never a string literal: bundlers would otherwise try to bundle `ws` into
// browser builds, where it is neither needed nor installed.
const WS_PACKAGE = 'ws';
let wsPackage;

async function defaultWebSocket() {
  if (typeof globalThis.WebSocket === 'function') return globalThis.WebSocket;
  wsPackage ??= import(/* webpackIgnore: true */ WS_PACKAGE).then(
    (m) => m.WebSocket ?? m.default,
    () => {
      wsPackage = undefined; // let a later attempt try again
      throw new Error('@heraldhq/client: no WebSocket in this runtime; install the "ws" package or pass options.WebSocket');
    },
  );
  return wsPackage;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Returns the bytes of a binary payload, or null for a JSON one. */
function asBytes(data) {
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return null;
}

/** Encodes a message: JSON text, or a binary frame (JSON header, '\n', bytes). */
function encodeFrame(msg, bytes) {
  const json = JSON.stringify(msg);
  if (!bytes) return json;
  // Compact JSON holds no raw newline, so the first 0x0A ends the header.
  const header = encoder.encode(json);
  const frame = new Uint8Array(header.length + 1 + bytes.length);
  frame.set(header);
  frame[header.length] = 0x0a;
  frame.set(bytes, header.length + 1);
  return frame;
}

/** Decodes a frame; the payload of a binary one becomes msg.data, a Uint8Array. */
function decodeFrame(raw) {
  if (typeof raw === 'string') return JSON.parse(raw);
  const bytes = asBytes(raw);
  if (!bytes) throw new Error('unsupported frame type (set binaryType to "arraybuffer")');
  const nl = bytes.indexOf(0x0a);
  if (nl < 0) throw new Error('binary frame without a header');
  const msg = JSON.parse(decoder.decode(bytes.subarray(0, nl)));
  // A copy, so that data.buffer holds the payload alone, not the header.
  if (msg && typeof msg === 'object') msg.data = bytes.slice(nl + 1);
  return msg;
}

/**
 * The data of a text pub push exactly as the server sent it: its bytes are
 * a delta's base. The server writes {"push":"pub","channel":…,"offset":…,
 * "data":<data>} with data last, and nothing before it can hold ',"data":'
 * (channel names have no quotes).
 */
function rawData(raw) {
  const i = typeof raw === 'string' ? raw.indexOf(',"data":') : -1;
  return i < 0 ? '' : raw.slice(i + 8, raw.lastIndexOf('}'));
}

/** Throws a TypeError, naming what, unless value is undefined or JSON. */
function checkJSON(value, what) {
  if (value === undefined) return;
  if (typeof value === 'function' || typeof value === 'symbol' || asBytes(value)) {
    throw new TypeError(`${what} must be a JSON value, not ${asBytes(value) ? 'bytes' : typeof value}`);
  }
  try {
    JSON.stringify(value);
  } catch (err) {
    throw new TypeError(`${what} must be a JSON value: ${err.message}`); // a BigInt, a cycle
  }
}

/** A fresh idempotency key: 16 random bytes, base64url (22 characters). */
function newIdempotencyKey() {
  const bytes = new Uint8Array(16);
  // getRandomValues, unlike randomUUID, works in insecure (http:) pages too.
  if (typeof globalThis.crypto?.getRandomValues === 'function') globalThis.crypto.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  let bin = '';
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/** err, with the idempotency key of the publish that failed (when it had one). */
function withKey(err, key) {
  if (key !== undefined && err instanceof HeraldError) err.idempotencyKey = key;
  return err;
}

function base64ToBytes(b64) {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/**
 * Calls an application callback. A callback that throws must not break the
 * frame loop, nor be hidden: its error is rethrown on its own, where the
 * runtime reports uncaught errors.
 */
function invoke(fn, ...args) {
  if (typeof fn !== 'function') return;
  try {
    fn(...args);
  } catch (err) {
    queueMicrotask(() => {
      throw err;
    });
  }
}

// The receive-only error: over Server-Sent Events the client sends nothing.
function receiveOnly(cmd) {
  return new HeraldError('receive_only', `${cmd} is not possible over Server-Sent Events (receive-only): publish over the HTTP API or a WebSocket`);
}

/** The SSE endpoint next to a WebSocket URL: ws(s)://host/ws -> http(s)://host/sse. */
function sseUrlFrom(url) {
  const u = new URL(url);
  u.protocol = u.protocol === 'wss:' ? 'https:' : u.protocol === 'ws:' ? 'http:' : u.protocol;
  u.pathname = u.pathname.replace(/\/ws\/?$/, '') + '/sse';
  u.search = '';
  return u.toString();
}

// Replace a dropped socket's handlers so that its late events reach nothing.
// (They are no-ops, not null: the `ws` package throws on an 'error' event
// that has no listener.)
function detach(ws) {
  const noop = () => {};
  ws.onopen = ws.onmessage = ws.onclose = ws.onerror = noop;
}

/**
 * A client of one Herald server. See README.md for the whole API.
 *
 * Events (c.on(name, fn)):
 *   state    ({state, ...}) connecting {attempt} | connected {clientId, data?} |
 *            disconnected {code, reason, reconnect, delay}
 *   message  (data, {binary}) a message the server sent to this connection
 *   subscription (sub, result) the server subscribed this client to a
 *            channel it had no Subscription for (sub.serverSide is true);
 *            called before any publication of it, so that sub.setHandlers
 *            there sees them all
 */
export class Herald {
  constructor(url, options = {}) {
    this.url = url;
    this.clientId = null;
    this._token = options.token;
    this._getToken = options.getToken;
    this._connectData = options.connectData;
    if (typeof this._connectData !== 'function') checkJSON(this._connectData, 'options.connectData');
    this._timeout = options.timeout ?? DEFAULT_TIMEOUT;
    this._backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
    this._WebSocket = options.WebSocket;
    // Server-Sent Events, receive-only: false (never), true (only), or
    // 'fallback' (when a WebSocket cannot open). See _openSSE.
    this._sse = options.sse ?? false;
    if (this._sse !== false && this._sse !== true && this._sse !== 'fallback') {
      throw new TypeError("options.sse must be false, true or 'fallback'");
    }
    this._sseUrl = options.sseUrl;
    this._EventSource = options.EventSource;
    this._transport = 'websocket'; // or 'sse'
    this._wsOpened = false; // the current WebSocket opened (its handshake passed)
    this._wsEverOpened = false; // a WebSocket opened since connect(): WebSocket works here
    this._reopening = false;
    const retry = options.publishRetry ?? true;
    this._publishRetry = retry !== false;
    this._publishRetryWindow = retry?.window ?? DEFAULT_PUBLISH_RETRY_WINDOW;
    // Delta delivery: applyDelta(base, delta) -> bytes, fossil-delta's
    // (see subscribe's delta option). Injected rather than imported, so this
    // file stays one module without imports, as browsers load it.
    this._applyDelta = options.applyDelta;
    if (this._applyDelta !== undefined && typeof this._applyDelta !== 'function') {
      throw new TypeError("options.applyDelta must be a function: import { applyDelta } from 'fossil-delta'");
    }

    this._state = 'disconnected';
    this._listeners = new Map(); // event -> Set of functions
    this._subs = new Map(); // channel -> Subscription
    this._leaving = new Map(); // channel -> unsubscribes awaiting their reply
    this._warned = new Set(); // channels of unexpected pushes already logged
    this._pending = new Map(); // id -> request sent on the current socket
    this._queue = new Set(); // requests waiting for a connection, in order
    this._nextId = 1;

    // Rate limiting. After a rate_limited answer (or a close 4007) commands
    // go through the line, one at a time; see _heldBack.
    this._throttled = false;
    this._line = []; // requests waiting their turn, by seq
    this._lineBusy = null; // the line's request on the wire
    this._lineTimer = null; // the pause after a refusal
    this._limited = 0; // the pause's exponent: +1 per refusal, -1/2 per accepted command
    this._seq = 0; // numbers requests in the order they were first sent (or lined up)
    this._sleeping = new Set(); // publishes waiting out a backoff delay before a retry

    this._socket = null;
    this._active = false; // between connect() and disconnect() or a final close
    this._attempt = 0; // failed attempts since the last successful connect
    this._firstAttempt = false;
    this._generation = 0; // bumped per attempt: stale async steps notice it
    this._refusal = null; // the error reply to this attempt's connect, if any
    this._openTimer = null;
    this._reconnectTimer = null;
    this._refreshTimer = null; // renews the token before it expires
    this._waiters = []; // connect() promises waiting for "connected"
  }

  /** connecting, connected or disconnected. */
  get state() {
    return this._state;
  }

  /** 'websocket', or 'sse' (receive-only: see options.sse). */
  get transport() {
    return this._transport;
  }

  /** Adds an event listener; returns a function that removes it. */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
  }

  _emit(event, ...args) {
    for (const fn of [...(this._listeners.get(event) ?? [])]) invoke(fn, ...args);
  }

  _setState(state, details = {}) {
    this._state = state;
    this._emit('state', { state, ...details });
  }

  /**
   * Connects, and keeps reconnecting until disconnect() is called or the
   * server closes with a final code. Resolves once connected; rejects if the
   * client gives up first.
   */
  connect() {
    if (this._state === 'connected') return Promise.resolve();
    const p = new Promise((resolve, reject) => this._waiters.push({ resolve, reject }));
    // Handled here so that a caller who does not await cannot crash Node with
    // an unhandled rejection; one who awaits still sees it.
    p.catch(() => {});
    if (!this._active) {
      this._active = true;
      this._attempt = 0;
      this._firstAttempt = true;
      this._wsEverOpened = false;
      this._transport = this._sse === true ? 'sse' : 'websocket';
      this._open();
    }
    return p;
  }

  /** Closes the connection and stops reconnecting. Subscriptions are kept for a later connect(). */
  disconnect() {
    if (!this._active && !this._socket) return;
    this._giveUp(1000, 'disconnect() called', new HeraldError('disconnected', 'disconnect() called'));
  }

  /** One connection attempt: token, WebSocket handshake, connect command. */
  async _open() {
    this._reconnectTimer = null;
    const gen = ++this._generation;
    this._refusal = null;
    this._setState('connecting', { attempt: this._attempt });
    // One bound for the whole attempt, so that a server that accepts TCP but
    // never answers cannot hold the client.
    this._openTimer = setTimeout(() => {
      const r = this._refusal;
      this._attemptFailed(gen, r ? `connect refused: ${r.code}: ${r.message}` : 'connect timeout');
    }, this._timeout);

    // A reconnect asks for a fresh token: the old one may have expired.
    let token = this._token;
    if (this._getToken && (!this._firstAttempt || token == null)) {
      try {
        token = await this._getToken();
      } catch (err) {
        this._attemptFailed(gen, `getToken failed: ${err?.message ?? err}`);
        return;
      }
    }
    // Asked anew for every attempt, like the token: what the app's backend
    // wants to hear (a device id, a resume cursor) may have changed.
    let data = this._connectData;
    if (typeof data === 'function') {
      try {
        data = await data();
        checkJSON(data, 'connectData');
      } catch (err) {
        this._attemptFailed(gen, `connectData failed: ${err?.message ?? err}`);
        return;
      }
    }
    if (this._transport === 'sse') {
      if (gen === this._generation) this._openSSE(gen, token);
      return;
    }
    let WS = this._WebSocket;
    if (!WS) {
      try {
        WS = await defaultWebSocket();
      } catch (err) {
        // No WebSocket implementation at all: retrying cannot help.
        if (gen === this._generation) this._giveUp(ABNORMAL_CLOSURE, err.message, err);
        return;
      }
    }
    if (gen !== this._generation) return; // disconnect() or the attempt's timer came first
    this._firstAttempt = false;

    let ws;
    try {
      ws = new WS(this.url, SUBPROTOCOL);
    } catch (err) {
      this._giveUp(ABNORMAL_CLOSURE, err.message, err); // a bad URL: retrying cannot help
      return;
    }
    this._socket = ws;
    this._wsOpened = false;
    ws.binaryType = 'arraybuffer';
    ws.onopen = () => {
      if (ws === this._socket) this._wsOpened = this._wsEverOpened = true;
      this._onOpen(ws, gen, token, data);
    };
    ws.onmessage = (ev) => this._onFrame(ws, ev.data);
    ws.onclose = (ev) => this._onClose(ws, ev.code, ev.reason);
    // An error means the connection failed. Browsers and `ws` follow it with
    // a close event (code 1006), but Node 20's built-in WebSocket may not: a
    // refused connection stays CONNECTING forever. So the error ends it here.
    ws.onerror = (ev) => {
      if (ws === this._socket) this._attemptFailed(this._generation, ev?.message ? `connection error: ${ev.message}` : 'connection error');
    };
  }

  _onOpen(ws, gen, token, data) {
    if (ws !== this._socket) return;
    const cmd = { cmd: 'connect' };
    if (token != null) cmd.token = token;
    if (data !== undefined) cmd.data = data;
    const subs = this._serverSidePositions();
    if (subs) cmd.subs = subs;
    // No timeout of its own: the attempt's timer covers it.
    this._command(cmd, null, { now: true, timeout: 0 }, (err, result) => {
      if (err) {
        // Refused (a bad token, say). The server closes the connection
        // itself, with the code that says whether to come back (4501: not
        // with this token), so wait for it; the attempt's timer bounds that.
        if (ws === this._socket && err.code !== 'disconnected' && err.code !== 'timeout') this._refusal = err;
        return;
      }
      if (ws !== this._socket) return;
      clearTimeout(this._openTimer);
      this._openTimer = null;
      this._attempt = 0;
      this.clientId = result?.client ?? null;
      this._state = 'connected';
      // Subscriptions first, then requests made meanwhile: replies come in
      // command order, so a queued publish sees its channel subscribed.
      // (After a close 4007 they all go through the line.)
      // (Server-side ones are not the client's to make: the server sent
      // their subscribe pushes, or will, or ends them with unsub.)
      for (const sub of this._subs.values()) if (!sub.serverSide) this._subscribe(sub);
      const queued = [...this._queue];
      this._queue.clear();
      for (const req of queued) this._dispatch(req);
      this._pump();
      this._setState('connected', result?.data === undefined ? { clientId: this.clientId } : { clientId: this.clientId, data: result.data });
      for (const w of this._waiters.splice(0)) w.resolve();
      this._scheduleRefresh(result?.expires, gen);
    });
  }

  /**
   * connect's `subs`: every server-side subscription with the position it
   * reached, so that the server can make it again and recover what was
   * missed; null when there is none. A channel without history has no
   * position, but subs names every channel: it goes with offset 0 and an
   * empty epoch, which the server takes for "no position": it makes the
   * subscription again with nothing to recover, as a resubscribe of the
   * client's own subscriptions without history does.
   */
  _serverSidePositions() {
    let subs = null;
    for (const sub of this._subs.values()) {
      if (!sub.serverSide) continue;
      subs ??= {};
      subs[sub.channel] = { offset: sub.offset ?? 0, epoch: sub.epoch ?? '' };
    }
    return subs;
  }

  /**
   * Renews the connection's token before it expires: when four fifths of its
   * remaining life have passed, getToken() is asked for a fresh one and sent
   * with `refresh`. Without getToken the server closes the connection at
   * expiry (4004) and the reconnect asks for nothing new, so it would fail:
   * give getToken whenever tokens expire.
   */
  _scheduleRefresh(expires, gen) {
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    if (!expires || !this._getToken) return;
    const delay = Math.max(1000, Math.floor((expires * 1000 - Date.now()) * 0.8));
    this._refreshTimer = setTimeout(async () => {
      this._refreshTimer = null;
      if (gen !== this._generation) return;
      let token;
      try {
        token = await this._getToken();
      } catch (err) {
        console.warn(`herald: getToken failed, token not refreshed: ${err?.message ?? err}`);
        return; // the server closes at expiry (4004); the reconnect tries again
      }
      if (gen !== this._generation) return;
      this._command({ cmd: 'refresh', token }, null, { perSend: true, bound: true }, (err, result) => {
        if (err) {
          // A refused token: the server closes with 4501 and we stop there.
          if (err.code !== 'disconnected') console.warn(`herald: token refresh refused: ${err.code}: ${err.message}`);
          return;
        }
        this._scheduleRefresh(result?.expires, gen);
      });
    }, delay);
  }

  /** Ends the current attempt or connection from our side, then backs off. */
  _attemptFailed(gen, reason) {
    if (gen !== this._generation || !this._active) return;
    const ws = this._socket;
    if (ws) {
      detach(ws);
      // The server is not answering: a close handshake would only wait for
      // it (the ws package keeps such a socket 30 s). Cut it where we can.
      try {
        if (typeof ws.terminate === 'function') ws.terminate();
        else ws.close(); // no reason: browsers throw on one over 123 bytes
      } catch {
        // nothing more to do: the socket is detached and forgotten
      }
    }
    this._lost(ABNORMAL_CLOSURE, reason);
  }

  _onClose(ws, code, reason) {
    if (ws !== this._socket) return;
    detach(ws);
    this._lost(code, reason);
  }

  /** The socket is gone: fail what was sent on it, then reconnect or stop. */
  _lost(code, reason) {
    this._socket = null;
    this.clientId = null;
    this._generation++;
    clearTimeout(this._openTimer);
    clearTimeout(this._refreshTimer);
    clearTimeout(this._lineTimer);
    this._openTimer = this._refreshTimer = this._lineTimer = null;
    this._lineBusy = null;
    // The line's requests were not executed (never sent, or refused): they
    // wait for the next connection, ahead of the retries of those that were
    // lost on the wire. Subscribes and refreshes are made anew instead.
    for (const req of this._line.splice(0)) {
      if (req.bound) {
        this._settle(req, new HeraldError('disconnected', `connection lost before ${req.cmd} was sent`));
      } else {
        this._queue.add(req);
        this._armWait(req);
      }
    }
    if (code === CLOSE_RATE_LIMITED) {
      // Flooded: the next connection sends its commands through the line
      // from the start, with a longer pause after a refusal.
      this._throttled = true;
      this._limited++;
    }
    this._failSent();
    for (const sub of this._subs.values()) sub._connectionLost();
    if (this._sse === 'fallback' && this._transport === 'websocket' && !this._wsEverOpened) {
      // No WebSocket has opened since connect() (a proxy that breaks the
      // upgrade, say): receive over SSE from now on, until connect() is
      // called anew. One that opened before proves WebSocket works here: a
      // later attempt refused (a node restarting, a 503 while it drains)
      // is retried as a WebSocket, not turned into a receive-only stream.
      this._transport = 'sse';
    }
    if (isFinalClose(code)) {
      // connect() callers learn why: the connect's error reply if there was one.
      const err = this._refusal ?? new HeraldError('disconnected', `the server closed the connection for good (${code} ${reason})`);
      this._giveUp(code, reason, err);
      return;
    }
    const delay = backoffDelay(this._attempt, this._backoff);
    this._attempt++;
    this._reconnectTimer = setTimeout(() => this._open(), delay);
    this._setState('disconnected', { code, reason, reconnect: true, delay });
  }

  /** Stops for good: clears every timer and fails everything outstanding. */
  _giveUp(code, reason, err) {
    this._active = false;
    this._generation++;
    clearTimeout(this._openTimer);
    clearTimeout(this._reconnectTimer);
    clearTimeout(this._refreshTimer);
    clearTimeout(this._lineTimer);
    this._openTimer = this._reconnectTimer = this._refreshTimer = this._lineTimer = null;
    this._lineBusy = null;
    this._throttled = false;
    this._limited = 0;
    const ws = this._socket;
    this._socket = null;
    this.clientId = null;
    if (ws) {
      detach(ws);
      try {
        ws.close(1000, 'bye');
      } catch {
        // still connecting: nothing to say goodbye to
      }
    }
    this._failSent();
    const gone = () => new HeraldError('disconnected', 'the client is disconnected');
    for (const req of this._line.splice(0)) this._settle(req, gone());
    for (const req of this._queue) this._settle(req, gone());
    this._queue.clear();
    for (const sleeper of this._sleeping) {
      clearTimeout(sleeper.timer);
      sleeper.fail(gone());
    }
    this._sleeping.clear();
    for (const sub of this._subs.values()) sub._connectionLost(true);
    for (const w of this._waiters.splice(0)) w.reject(err);
    this._setState('disconnected', { code, reason, reconnect: false });
  }

  _failSent() {
    for (const req of this._pending.values()) {
      this._settle(req, new HeraldError('disconnected', `connection lost before the reply to ${req.cmd}`));
    }
    this._pending.clear();
  }

  _settle(req, err, result) {
    if (req.settled) return;
    req.settled = true;
    clearTimeout(req.timer);
    req.done(err, result);
  }

  /** Whether a command can go on the wire now. */
  _canSend() {
    return this._state === 'connected' && this._socket !== null && this._transport === 'websocket';
  }

  /**
   * Sends a command; done(err, result) is called once, with the reply or a
   * failure. It runs synchronously as the reply is read, before the frames
   * that follow it: the ws package may deliver several frames in one tick,
   * and a subscribe reply must take effect before the pushes behind it (a
   * promise's then() would run after them). While the client is
   * (re)connecting the command waits for the connection. A rate_limited
   * answer is not passed on: the command is sent again (see _heldBack).
   *
   * Options: now: send at once, before anything else (the connect command).
   * timeout: ms; by default it counts from the call, and bounds the wait for
   * the connection, the rate-limit retries and the reply together. perSend:
   * it counts from each sending to its reply only, and the wait before
   * sending is bounded by deadline (a time, as Date.now()) if at all.
   * bound: the command belongs to its connection (subscribe, refresh): a
   * loss drops it instead of sending it on the next connection. stale: a
   * function that says the command is no longer wanted (checked before it
   * leaves the line).
   */
  _command(cmd, bytes, { now = false, timeout = this._timeout, perSend = false, deadline = Infinity, bound = false, stale = null }, done) {
    if (!this._active) {
      done(new HeraldError('disconnected', 'not connected: call connect() first'));
      return;
    }
    if (this._transport === 'sse') {
      done(receiveOnly(cmd.cmd));
      return;
    }
    const id = this._nextId++;
    let frame;
    try {
      frame = encodeFrame({ id, ...cmd }, bytes);
    } catch (err) {
      done(err); // e.g. a BigInt in data
      return;
    }
    const req = { id, cmd: cmd.cmd, frame, done, timer: null, timeout, perSend, deadline, bound, stale, seq: 0, limited: null, settled: false };
    if (!perSend && timeout > 0) req.timer = setTimeout(() => this._expire(req), timeout);
    if (now) {
      this._transmit(req);
    } else if (this._canSend()) {
      this._dispatch(req);
    } else {
      this._queue.add(req);
      this._armWait(req);
    }
  }

  /** _command as a promise, for the public methods. */
  _request(cmd, bytes = null) {
    return new Promise((resolve, reject) => this._command(cmd, bytes, {}, (err, result) => (err ? reject(err) : resolve(result))));
  }

  // A perSend request's timer: while it waits, its deadline (if any); on the wire, its timeout.
  _armWait(req) {
    if (!req.perSend) return;
    clearTimeout(req.timer);
    req.timer = req.deadline === Infinity ? null : setTimeout(() => this._expire(req), Math.max(0, req.deadline - Date.now()));
  }

  _armWire(req) {
    if (!req.perSend) return;
    clearTimeout(req.timer);
    req.timer = req.timeout > 0 ? setTimeout(() => this._expire(req), req.timeout) : null;
  }

  /** A request's timer fired: take it back from wherever it waits, and fail it. */
  _expire(req) {
    const sent = this._pending.get(req.id) === req;
    this._pending.delete(req.id); // a late reply is then ignored
    this._queue.delete(req);
    const i = this._line.indexOf(req);
    if (i >= 0) this._line.splice(i, 1);
    let err;
    if (sent || !req.perSend) {
      err = req.limited && !sent
        ? new HeraldError('rate_limited', `${req.cmd} was still rate limited after ${req.timeout} ms: ${req.limited.message}`)
        : new HeraldError('timeout', `no reply to ${req.cmd} within ${req.timeout} ms`);
    } else if (this._canSend()) {
      err = new HeraldError('rate_limited', `${req.cmd} was held back by the rate limit until its deadline`);
    } else {
      err = new HeraldError('disconnected', `no connection to send ${req.cmd} on before its deadline`);
    }
    const busy = this._lineBusy === req;
    if (busy) this._lineBusy = null;
    this._settle(req, err);
    if (busy) this._pump();
  }

  /** Sends req now, or lines it up while the server is rate limiting this client. */
  _dispatch(req) {
    req.seq ||= ++this._seq;
    if (this._throttled) {
      this._lineUp(req);
      this._pump();
    } else {
      this._transmit(req);
    }
  }

  _transmit(req) {
    req.seq ||= ++this._seq;
    this._pending.set(req.id, req);
    this._armWire(req);
    try {
      this._socket.send(req.frame);
    } catch (err) {
      this._pending.delete(req.id);
      if (this._lineBusy === req) this._lineBusy = null;
      this._settle(req, new HeraldError('disconnected', `send failed: ${err.message}`));
    }
  }

  /** Puts req in the line, in the order in which requests were first sent. */
  _lineUp(req) {
    let i = this._line.length;
    while (i > 0 && this._line[i - 1].seq > req.seq) i--;
    this._line.splice(i, 0, req);
    this._armWait(req);
  }

  /**
   * The server refused req for the rate (rate_limited): it did nothing, so
   * req is sent again. From now on every command goes through the line,
   * which sends one at a time, the next as soon as the previous one is
   * answered. A refusal puts the refused command back at its place and
   * pauses the line for a backoff delay, random below backoff.min·2^k
   * (capped at backoff.max; full jitter), where k goes up by 1 with each
   * refusal and down by 1/2 with each accepted command: the pause grows
   * while the server keeps refusing and shrinks as commands get through,
   * settling where about two commands get through per refusal. So the
   * client sends about as fast as the server accepts, with refusals well
   * below the pace that gets a connection closed (4007, for refusals at
   * over the rate). Refusals of commands sent before the line began just
   * join it. The line ends when it is empty.
   */
  _heldBack(req, err, fromLine) {
    req.limited = err;
    this._lineUp(req);
    if (fromLine || !this._throttled) {
      this._throttled = true;
      clearTimeout(this._lineTimer);
      this._lineTimer = setTimeout(() => {
        this._lineTimer = null;
        this._pump();
      }, backoffDelay(this._limited++, this._backoff));
    } else {
      this._pump(); // a no-op unless the line is idle
    }
  }

  /** Sends the line's next request, unless one is on the wire or the line is paused. */
  _pump() {
    if (this._lineBusy || this._lineTimer || !this._canSend()) return;
    let req;
    while ((req = this._line.shift()) && req.stale?.()) {
      this._settle(req, new HeraldError('unsubscribed', `${req.cmd} is no longer wanted`));
    }
    if (!req) {
      this._throttled = false;
      return;
    }
    this._lineBusy = req;
    this._transmit(req);
  }

  _onFrame(ws, raw) {
    if (ws !== this._socket) return;
    let msg;
    try {
      msg = decodeFrame(raw);
    } catch (err) {
      console.warn('@heraldhq/client: ignoring an undecodable frame:', err.message);
      return;
    }
    if (msg === null || typeof msg !== 'object') return;
    if (typeof msg.push === 'string') {
      this._onPush(msg, raw);
      return;
    }
    const req = this._pending.get(msg.id);
    if (!req) {
      // id 0 answers a command the server could not read: a bug on our side.
      if (msg.id === 0) console.warn('@heraldhq/client: the server could not read a command:', msg.error?.message);
      return; // otherwise, the reply to a request that already timed out
    }
    this._pending.delete(msg.id);
    const fromLine = req === this._lineBusy;
    if (fromLine) this._lineBusy = null;
    if (msg.error?.code === 'rate_limited' && req.cmd !== 'connect') {
      this._heldBack(req, new HeraldError(msg.error.code, msg.error.message), fromLine);
      return;
    }
    if (fromLine) this._limited = Math.max(0, this._limited - 0.5);
    if (msg.error) this._settle(req, new HeraldError(msg.error.code, msg.error.message));
    else this._settle(req, null, msg.result);
    if (fromLine) this._pump();
  }

  _onPush(msg, raw) {
    if (msg.push === 'message') {
      this._emit('message', msg.data, { binary: msg.data instanceof Uint8Array });
      return;
    }
    if (msg.push === 'unsub') {
      this._onUnsub(msg);
      return;
    }
    if (msg.push === 'subscribe') {
      this._onServerSubscribe(msg);
      return;
    }
    if (msg.push !== 'pub' && msg.push !== 'join' && msg.push !== 'leave' && msg.push !== 'dropped') return; // a newer kind: ignore
    // Until the unsubscribe reply, pushes are the old subscription's (in
    // flight when we unsubscribed), even if the channel was subscribed again.
    if (this._leaving.has(msg.channel)) return;
    const sub = this._subs.get(msg.channel);
    if (sub) {
      sub._onPush(msg, raw);
    } else if (!this._warned.has(msg.channel)) {
      this._warned.add(msg.channel);
      console.warn(`@heraldhq/client: ignoring ${msg.push} pushes for "${msg.channel}": no subscription (logged once per channel)`);
    }
  }

  /**
   * The server ended a subscription (e.g. the HTTP API's unsubscribe_user):
   * nothing more of it follows, and the client must not resubscribe, now or
   * after a reconnect. So the Subscription ends here, as after unsubscribe().
   */
  _onUnsub(msg) {
    // Our own unsubscribe is on its way: the push ends the subscription it
    // ends, not the one that may have been made since.
    if (this._leaving.has(msg.channel)) return;
    const sub = this._subs.get(msg.channel);
    if (!sub) return;
    this._subs.delete(msg.channel);
    sub._unsubscribedByServer(msg.code ?? '', msg.reason ?? '');
  }

  /**
   * The server subscribed this connection to a channel (a subscribe push):
   * on connect (its hook's channels, or those named in connect's subs that
   * it made again) or later (its API). The channel's Subscription, new or
   * existing, is server-side from now on: a reconnect names it in subs
   * rather than subscribing. The push runs synchronously in the frame loop,
   * so the 'subscription' listeners see the new Subscription before the
   * publications that follow the push.
   */
  _onServerSubscribe(msg) {
    if (typeof msg.channel !== 'string') return;
    // Our own unsubscribe is on its way: the server made this one before it
    // read that command, which then ends it.
    if (this._leaving.has(msg.channel)) return;
    const res = {};
    if (msg.offset !== undefined) res.offset = msg.offset;
    if (msg.epoch !== undefined) res.epoch = msg.epoch;
    if (msg.recovered !== undefined) res.recovered = msg.recovered;
    if (msg.reason !== undefined) res.reason = msg.reason;
    let sub = this._subs.get(msg.channel);
    if (sub) {
      // Ours, or one made on an earlier connection. Ours becomes the
      // server's: a second subscribe for the same channel (ours, on a
      // reconnect) would be refused as already_subscribed.
      sub.serverSide = true;
    } else {
      sub = new Subscription(this, msg.channel, {});
      sub.serverSide = true;
      this._subs.set(msg.channel, sub);
      this._emit('subscription', sub, res);
    }
    sub._subscribed(res);
  }

  /**
   * One attempt over Server-Sent Events: an EventSource on sseUrl naming
   * every subscription's channel, the token in the query (EventSource
   * cannot send headers), and each channel's position in last_event_id so
   * that the server recovers what was missed. The client, not EventSource,
   * reconnects: on any error the stream is closed and the usual backoff
   * opens a new one, with a fresh token and the positions reached. The
   * stream's channels are fixed, so subscribe() and unsubscribe() open a
   * new one. With no subscription there is no stream to open: the client
   * is connected with nothing to receive. A stream counts as a connection
   * at its first event other than close: one that ends with a close event
   * before (a node that cannot take it now) is a failed attempt.
   */
  _openSSE(gen, token) {
    const ES = this._EventSource ?? globalThis.EventSource;
    if (typeof ES !== 'function') {
      const err = new Error('@heraldhq/client: no EventSource in this runtime; pass options.EventSource (the "eventsource" package in Node)');
      this._giveUp(ABNORMAL_CLOSURE, err.message, err);
      return;
    }
    const subs = [...this._subs.values()];
    if (subs.length === 0) {
      this._sseOpened(gen);
      return;
    }
    let u;
    try {
      u = new URL(this._sseUrl ?? sseUrlFrom(this.url));
    } catch (err) {
      this._giveUp(ABNORMAL_CLOSURE, err.message, err); // a bad URL: retrying cannot help
      return;
    }
    for (const sub of subs) u.searchParams.append('channel', sub.channel);
    if (token != null) u.searchParams.set('token', token);
    const slots = subs.map((sub) => (sub.epoch === undefined ? '' : `${sub.offset ?? 0}:${encodeURIComponent(sub.epoch)}`));
    if (slots.some((slot) => slot !== '')) u.searchParams.set('last_event_id', slots.join(','));
    const es = new ES(u.toString());
    this._socket = es;
    const on = (name, fn) =>
      es.addEventListener(name, (ev) => {
        if (es !== this._socket) return; // a stream we dropped
        let msg;
        try {
          msg = JSON.parse(ev.data);
        } catch {
          console.warn(`@heraldhq/client: ignoring an undecodable ${name} event`);
          return;
        }
        if (msg === null || typeof msg !== 'object') return;
        // Connected at the stream's first event other than close (each
        // channel's subscribed comes first), not when it opens: a node that
        // cannot take the stream now (draining, stopping, full) answers 200
        // with nothing but a close event, and a stream taken for a
        // connection would resolve connect() and start the backoff over at
        // every such refusal.
        if (name !== 'close') this._sseOpened(gen);
        fn(msg);
      });
    es.onerror = () => {
      if (es === this._socket) this._attemptFailed(this._generation, 'event stream error');
    };
    const push = (msg) => {
      if (typeof msg.binary === 'string') msg.data = base64ToBytes(msg.binary);
      this._onPush(msg);
    };
    on('message', push);
    on('direct', push);
    on('join', push);
    on('leave', push);
    on('unsub', push);
    on('subscribed', (msg) => {
      const sub = this._subs.get(msg.channel);
      if (!sub) return;
      const res = {};
      for (const k of ['offset', 'epoch', 'recovered', 'reason']) if (msg[k] !== undefined) res[k] = msg[k];
      sub._subscribed(res);
    });
    on('close', (msg) => {
      // The server ends the stream, saying why as a WebSocket close would.
      detach(es);
      es.close();
      this._lost(msg.code ?? ABNORMAL_CLOSURE, msg.reason ?? '');
    });
  }

  /** The event stream delivered its first event (or there is none to open): connected. */
  _sseOpened(gen) {
    if (gen !== this._generation || this._state === 'connected') return;
    clearTimeout(this._openTimer);
    this._openTimer = null;
    this._attempt = 0;
    this._state = 'connected';
    // What waited for a connection cannot go over this one.
    const queued = [...this._queue];
    this._queue.clear();
    for (const req of queued) this._settle(req, receiveOnly(req.cmd));
    this._setState('connected', { clientId: null, transport: 'sse' });
    for (const w of this._waiters.splice(0)) w.resolve();
  }

  /**
   * The subscriptions changed while receiving over SSE: open a stream for
   * the new set (once for every change made in the same tick).
   */
  _reopenSSE() {
    if (!this._active || this._reopening) return;
    this._reopening = true;
    queueMicrotask(() => {
      this._reopening = false;
      // Waiting out a backoff delay: the next attempt names them all.
      if (!this._active || this._transport !== 'sse' || this._reconnectTimer) return;
      const es = this._socket;
      if (es) {
        detach(es);
        es.close();
      }
      this._socket = null;
      this._generation++; // an attempt under way is superseded
      clearTimeout(this._openTimer);
      this._openTimer = null;
      for (const sub of this._subs.values()) sub._connectionLost();
      this._open();
    });
  }

  /**
   * Subscribes to channel, now if connected and after every reconnect. Throws
   * if this client already has a Subscription for channel.
   */
  subscribe(channel, options = {}) {
    if (typeof channel !== 'string') throw new TypeError('channel must be a string');
    if (this._subs.has(channel)) throw new HeraldError('already_subscribed', `already subscribed to "${channel}"`);
    if (options.delta && !this._applyDelta) {
      throw new TypeError("options.delta needs the client's applyDelta option: new Herald(url, { applyDelta }) with import { applyDelta } from 'fossil-delta'");
    }
    const sub = new Subscription(this, channel, options);
    this._subs.set(channel, sub);
    if (this._canSend()) this._subscribe(sub);
    else if (this._transport === 'sse') this._reopenSSE();
    return sub;
  }

  /** Sends sub's subscribe command, with since when it has a position. */
  _subscribe(sub) {
    clearTimeout(sub._retryTimer);
    sub._retryTimer = null;
    sub._state = 'subscribing';
    const cmd = { cmd: 'subscribe', channel: sub.channel };
    if (sub.epoch !== undefined) cmd.since = { offset: sub.offset ?? 0, epoch: sub.epoch };
    if (sub._handlers.token) cmd.token = sub._handlers.token; // a subscription token
    if (sub._handlers.delta) cmd.delta = 'fossil';
    const ws = this._socket;
    // perSend: a subscribe waiting in the rate limit's line has no timeout;
    // only one on the wire does.
    const stale = () => this._subs.get(sub.channel) !== sub;
    this._command(cmd, null, { perSend: true, bound: true, stale }, (err, result) => {
      if (stale() || ws !== this._socket) return; // superseded
      // The server made it its own meanwhile (a subscribe push): its
      // push said how it stands; our command's answer (already_subscribed,
      // say) no longer matters.
      if (sub.serverSide) return;
      if (!err) {
        sub._subscribed(result ?? {});
      } else if (err.code === 'timeout') {
        // The server's view of this subscription is unknown now; a fresh
        // connection makes it known again (and resubscribes everything).
        this._attemptFailed(this._generation, `subscribe to "${sub.channel}" timed out`);
      } else if (err.code === 'unavailable' || err.code === 'rate_limited') {
        // Transient on the server's side: try again after a backoff delay.
        // (rate_limited does not come here: _command sends it again itself.)
        sub._retryTimer = setTimeout(() => {
          if (this._state === 'connected' && this._subs.get(sub.channel) === sub && !sub.serverSide) this._subscribe(sub);
        }, backoffDelay(sub._retries++, this._backoff));
      } else if (err.code !== 'disconnected') {
        this._subs.delete(sub.channel);
        sub._failed(err);
      }
    });
  }

  _unsubscribe(sub) {
    if (this._subs.get(sub.channel) !== sub) return Promise.resolve();
    this._subs.delete(sub.channel);
    sub._ended(new HeraldError('unsubscribed', `unsubscribed from "${sub.channel}"`));
    if (this._transport === 'sse') this._reopenSSE();
    if (!this._canSend()) return Promise.resolve(); // the server forgot it with the last connection
    const ch = sub.channel;
    this._leaving.set(ch, (this._leaving.get(ch) ?? 0) + 1);
    return new Promise((resolve, reject) => {
      this._command({ cmd: 'unsubscribe', channel: ch }, null, {}, (err) => {
        const n = this._leaving.get(ch) - 1;
        if (n > 0) this._leaving.set(ch, n);
        else this._leaving.delete(ch);
        // not_subscribed: the subscribe had failed or was never made; done either way.
        if (err && err.code !== 'not_subscribed' && err.code !== 'disconnected') reject(err);
        else resolve();
      });
    });
  }

  /**
   * A delta of sub's channel came on a base sub does not hold (a publication
   * was lost on the way, or the checksum failed): unsubscribe, and once
   * that is answered subscribe again from sub's position, which recovers
   * the missed publications in full. Until the unsubscribe's reply the
   * channel's pushes are ignored (_leaving), as those of any unsubscribe.
   */
  _resync(sub) {
    const ch = sub.channel;
    this._leaving.set(ch, (this._leaving.get(ch) ?? 0) + 1);
    sub._state = 'subscribing';
    this._command({ cmd: 'unsubscribe', channel: ch }, null, {}, (err) => {
      const n = this._leaving.get(ch) - 1;
      if (n > 0) this._leaving.set(ch, n);
      else this._leaving.delete(ch);
      if (err?.code === 'disconnected') return; // the reconnect resubscribes from the position
      if (this._subs.get(ch) === sub && this._canSend() && !sub.serverSide) this._subscribe(sub);
    });
  }

  /** The Subscription of this client for channel, if any. */
  getSubscription(channel) {
    return this._subs.get(channel) ?? null;
  }

  /**
   * Publishes data to channel: a Uint8Array, another ArrayBufferView or an
   * ArrayBuffer goes as bytes (a binary frame); anything else as JSON (a
   * string travels as a JSON string). Resolves with {offset, epoch} on a
   * channel with history, plus duplicate: true when the idempotency key was
   * seen (an earlier attempt of this publish, or an earlier publish with the
   * same key, was published: offset and epoch are its).
   *
   * Unless retry is false (here or in the client's options), the publish
   * carries an idempotency key (idempotencyKey, else a random one) and is
   * retried with it when its outcome is unknown: answered unavailable, or
   * the connection lost before the reply (then once reconnected). key is the
   * publication's conflation key (a namespace with overflow conflate keeps
   * only the newest per channel and key for a slow subscriber). Retries
   * stop after the publishRetry window; the last failure then rejects, with
   * the key in err.idempotencyKey.
   */
  publish(channel, data, { idempotencyKey, retry, key: conflationKey } = {}) {
    const bytes = asBytes(data);
    const cmd = { cmd: 'publish', channel };
    if (conflationKey !== undefined) cmd.key = String(conflationKey);
    if (!bytes) {
      if (data === undefined || typeof data === 'function' || typeof data === 'symbol') {
        return Promise.reject(new TypeError('publish: data must be a JSON value, a Uint8Array or an ArrayBuffer'));
      }
      cmd.data = data;
    }
    const retrying = retry ?? this._publishRetry;
    const key = idempotencyKey ?? (retrying ? newIdempotencyKey() : undefined);
    if (key !== undefined) cmd.idempotency_key = key;
    if (!retrying) {
      return this._request(cmd, bytes).then(
        (r) => r ?? {},
        (err) => Promise.reject(withKey(err, key)),
      );
    }
    return this._publishRetrying(cmd, bytes);
  }

  /**
   * Sends a publish until it gets an answer that settles it, within the
   * retry window. Each attempt waits timeout for its reply once sent (no
   * reply: it fails with "timeout", not retried: the server is not
   * answering), and may wait for a connection until the window ends.
   */
  _publishRetrying(cmd, bytes) {
    const start = Date.now();
    const deadline = start + this._publishRetryWindow;
    let attempts = 0;
    let unavailable = 0; // the backoff's exponent
    let last = null; // the failure that the last retry followed
    return new Promise((resolve, reject) => {
      const fail = (err) => {
        if (attempts > 1 && err instanceof HeraldError) {
          err = new HeraldError(err.code, `publish to "${cmd.channel}" failed after ${attempts} attempts in ${Date.now() - start} ms: ${err.message}`);
        }
        reject(withKey(err, cmd.idempotency_key));
      };
      const attempt = () => {
        if (attempts > 0 && Date.now() >= deadline) {
          fail(last);
          return;
        }
        attempts++;
        this._command(cmd, bytes, { perSend: true, deadline }, (err, result) => {
          if (!err) {
            resolve(result ?? {});
            return;
          }
          const unknown = err.code === 'unavailable' || err.code === 'disconnected';
          if (!unknown || !this._active || Date.now() >= deadline) {
            fail(err);
            return;
          }
          last = err;
          // Lost with the connection: the retry waits for the reconnect, no
          // more. (A socket still here means a send failed: back off then.)
          if (err.code === 'disconnected' && !this._socket) attempt();
          else this._sleep(Math.min(backoffDelay(unavailable++, this._backoff), deadline - Date.now()), attempt, fail);
        });
      };
      attempt();
    });
  }

  /** Calls then() after delay ms; disconnect() calls fail(err) instead. */
  _sleep(delay, then, fail) {
    const sleeper = {
      timer: setTimeout(() => {
        this._sleeping.delete(sleeper);
        then();
      }, delay),
      fail,
    };
    this._sleeping.add(sleeper);
  }

  /**
   * Reads a channel's history: {publications: [{offset, data, binary}], offset, epoch}.
   * Binary publications come back as Uint8Array.
   */
  async history(channel, { limit, since, reverse } = {}) {
    const cmd = { cmd: 'history', channel };
    if (limit !== undefined) cmd.limit = limit;
    if (since) cmd.since = { offset: since.offset, epoch: since.epoch };
    if (reverse) cmd.reverse = true;
    const res = await this._request(cmd);
    const publications = (res.publications ?? []).map((p) =>
      // Text publications always have data (a JSON value is never empty); an
      // empty binary payload comes with neither field.
      p.data !== undefined
        ? { offset: p.offset, data: p.data, binary: false }
        : { offset: p.offset, data: base64ToBytes(p.binary ?? ''), binary: true },
    );
    return { publications, offset: res.offset ?? 0, epoch: res.epoch };
  }

  /** The clients present in channel: {clients: {[clientId]: {client, user, info}}}. */
  async presence(channel) {
    const res = await this._request({ cmd: 'presence', channel });
    return { clients: res?.clients ?? {} };
  }

  /** Counts of the clients present in channel: {clients, users}. */
  async presenceStats(channel) {
    const res = await this._request({ cmd: 'presence_stats', channel });
    return { clients: res?.clients ?? 0, users: res?.users ?? 0 };
  }

  /**
   * Calls method of the application's backend with data (any JSON value, or
   * none) over this connection, and resolves with the backend's answer (a
   * JSON value; undefined when it gave none). Rejects with a HeraldError:
   * the backend's refusal with its own code (which may be one of the
   * application's, e.g. "not_found"), "not_enabled" (the server has no RPC
   * backend), "unavailable" (the backend failed or did not answer in time),
   * or one of the client's ("timeout", "disconnected").
   *
   * An rpc is not retried: the client cannot know whether the backend acted
   * on one whose reply was lost ("disconnected", "timeout", "unavailable"),
   * so only the app can say whether calling again is safe. ("rate_limited"
   * answers are retried: nothing was done.)
   */
  rpc(method, data) {
    if (typeof method !== 'string' || method === '') {
      return Promise.reject(new TypeError('rpc: method must be a non-empty string'));
    }
    try {
      checkJSON(data, 'rpc data');
    } catch (err) {
      return Promise.reject(err);
    }
    const cmd = { cmd: 'rpc', method };
    if (data !== undefined) cmd.data = data;
    return this._request(cmd).then((r) => r?.data);
  }

  /** An application-level round trip to the server. */
  async ping() {
    await this._request({ cmd: 'ping' });
  }
}

const HANDLER_NAMES = ['onMessage', 'onJoin', 'onLeave', 'onRecoveryFailed', 'onDropped', 'onSubscribed', 'onError', 'onUnsubscribed'];

/**
 * A client's subscription to one channel, from Herald#subscribe (or the
 * server's subscribe push: serverSide) until unsubscribe(), a refusal for
 * good (onError) or its end by the server (onUnsubscribed). It survives
 * reconnects: it tracks the channel's position (offset and epoch) so that a
 * resubscribe, or the server's making it again, recovers what was missed.
 */
export class Subscription {
  constructor(client, channel, options) {
    this.client = client;
    this.channel = channel;
    this.offset = options.since?.offset;
    this.epoch = options.since?.epoch;
    // Made by the server (a subscribe push), not by subscribe(): on a
    // reconnect the server, not the client, makes it again.
    this.serverSide = false;
    this._handlers = { ...options };
    this._state = 'subscribing';
    this._retries = 0;
    this._retryTimer = null;
    this._settled = false;
    this.ready = new Promise((resolve, reject) => {
      this._resolveReady = resolve;
      this._rejectReady = reject;
    });
    this.ready.catch(() => {}); // an app that never awaits ready must not crash Node
  }

  /** subscribing, subscribed or unsubscribed. */
  get state() {
    return this._state;
  }

  /** Publishes to this subscription's channel; see Herald#publish. */
  publish(data, options) {
    return this.client.publish(this.channel, data, options);
  }

  /**
   * Sets callbacks (onMessage, onJoin, onLeave, onRecoveryFailed,
   * onDropped, onSubscribed, onError, onUnsubscribed), replacing those of the same
   * names: how an app gives a server-side subscription its callbacks, in
   * its 'subscription' listener. Returns this.
   */
  setHandlers(handlers) {
    for (const name of HANDLER_NAMES) {
      if (handlers[name] !== undefined) this._handlers[name] = handlers[name];
    }
    return this;
  }

  /** Stops the subscription (its callbacks are not called any more). */
  unsubscribe() {
    return this.client._unsubscribe(this);
  }

  _subscribed(res) {
    if (res.epoch !== undefined) {
      // After a successful recovery, the pushes that follow the reply carry
      // the missed publications and advance the offset themselves: jumping to
      // the reply's offset now would skip them if the connection broke meanwhile.
      if (res.recovered !== true) this.offset = res.offset ?? 0; // 0 is omitted on the wire
      this.epoch = res.epoch;
    }
    this._state = 'subscribed';
    this._retries = 0;
    // A new subscription on the server: it sends full publications first.
    this._delta = res.delta === true;
    this._base = null;
    if (!this._settled) {
      this._settled = true;
      this._resolveReady(res);
    }
    if (res.recovered === false) invoke(this._handlers.onRecoveryFailed, res.reason, res);
    invoke(this._handlers.onSubscribed, res);
  }

  _onPush(msg, raw) {
    if (this._state === 'unsubscribed') return;
    switch (msg.push) {
      case 'pub':
        // A delta never reaches onMessage as bytes, even one not asked for.
        if ((this._delta || msg.delta === true) && !this._applyDeltaTo(msg, raw)) return;
        if (typeof msg.offset === 'number') this.offset = msg.offset;
        invoke(this._handlers.onMessage, msg.data, {
          channel: this.channel,
          offset: msg.offset,
          binary: msg.data instanceof Uint8Array,
        });
        break;
      case 'join':
        invoke(this._handlers.onJoin, msg.info);
        break;
      case 'leave':
        invoke(this._handlers.onLeave, msg.info);
        break;
      case 'dropped': {
        // The server dropped publications of a slow client (drop_oldest),
        // here in their place: the position moves past them, so that a
        // reconnect does not recover them; the app reads them from history
        // if they matter.
        const offsets = Array.isArray(msg.offsets) ? msg.offsets : [];
        const last = offsets.at(-1)?.[1];
        if (typeof last === 'number' && last > (this.offset ?? 0)) this.offset = last;
        invoke(this._handlers.onDropped, { channel: this.channel, count: msg.count ?? 0, offsets });
        break;
      }
    }
  }

  /**
   * Delta delivery: keeps the payload of each publication as its base, and
   * replaces a delta push's data by the delta applied to the base — only
   * when the base is the publication at offset-1 and the checksum holds.
   * Otherwise it resynchronises the subscription (Herald#_resync) and
   * returns false: the push is dropped, and recovery sends it again in full.
   */
  _applyDeltaTo(msg, raw) {
    if (msg.delta === true) {
      const base = this._base;
      if (!base || typeof msg.offset !== 'number' || this.offset !== msg.offset - 1) return this._resync();
      let out;
      try {
        out = this.client._applyDelta(base.bytes, msg.data);
      } catch (err) {
        console.warn(`@heraldhq/client: a delta of "${this.channel}" does not apply (${err.message}): resubscribing`);
        return this._resync();
      }
      this._base = { bytes: out, binary: base.binary };
      msg.data = base.binary ? out.slice() : JSON.parse(decoder.decode(out));
      return true;
    }
    if (msg.data instanceof Uint8Array) this._base = { bytes: msg.data.slice(), binary: true };
    else this._base = { bytes: encoder.encode(rawData(raw)), binary: false };
    return true;
  }

  _resync() {
    this._base = null;
    // A server-side subscription never asked for deltas: drop the push,
    // and leave the subscription (the server's to make or end) alone.
    if (!this.serverSide) this.client._resync(this);
    return false;
  }

  // The connection ended: resubscribe on the next one. final: the client
  // stopped, so a pending ready fails rather than wait for a connect() that
  // may never come.
  _connectionLost(final = false) {
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    if (this._state === 'unsubscribed') return;
    this._state = 'subscribing';
    if (final && !this._settled) {
      this._settled = true;
      this._rejectReady(new HeraldError('disconnected', `disconnected before subscribing to "${this.channel}"`));
    }
  }

  _failed(err) {
    this._ended(err);
    invoke(this._handlers.onError, err);
  }

  // The server ended the subscription (an unsub push).
  _unsubscribedByServer(code, reason) {
    this._ended(new HeraldError('unsubscribed', `the server ended the subscription to "${this.channel}" (${code}: ${reason})`));
    invoke(this._handlers.onUnsubscribed, { code, reason });
  }

  _ended(err) {
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this._state = 'unsubscribed';
    if (!this._settled) {
      this._settled = true;
      this._rejectReady(err);
    }
  }
}

export default Herald;
