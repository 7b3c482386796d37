// A small browser client for the herald.v1 protocol: commands with ids and
// replies, publication pushes, and reconnection with backoff that restores
// the client's subscriptions. It has no dependency and no build step.

export const SUBPROTOCOL = 'herald.v1';

const CHANNEL_RE = /^[A-Za-z0-9_\-.:@#,=/!]{1,255}$/;

/** Reports whether name is a valid channel name. */
export function validChannel(name) {
  return CHANNEL_RE.test(name);
}

/** An error reply from the server, or a local failure with a code of ours. */
export class HeraldError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'HeraldError';
    this.code = code;
  }
}

/** Close codes that ask the client not to reconnect (see the server's errors.go). */
function isFinalClose(code) {
  return code >= 4500 && code <= 4999;
}

/**
 * HeraldClient keeps one WebSocket to a Herald server open.
 *
 * Events (CustomEvent, details in parentheses):
 *   state        ({state, delay, code, reason}) state is one of idle,
 *                connecting, connected, reconnecting, closed.
 *                "connected" means open AND every subscription restored.
 *   publication  ({channel, data}) a message published to a subscribed channel.
 */
export class HeraldClient extends EventTarget {
  constructor(url, { minDelay = 500, maxDelay = 15000, callTimeout = 10000 } = {}) {
    super();
    this.url = url;
    this.minDelay = minDelay;
    this.maxDelay = maxDelay;
    this.callTimeout = callTimeout;
    this.state = 'idle';
    this.channels = new Set();
    this.ws = null;
    this.nextId = 1;
    this.pending = new Map();
    this.attempt = 0;
    this.retryTimer = null;
    this.stopped = false;
    // The browser knows when the network comes back: do not wait out the backoff.
    this.onOnline = () => {
      if (this.state === 'reconnecting') this.reconnectNow();
    };
    window.addEventListener('online', this.onOnline);
  }

  setState(state, extra = {}) {
    this.state = state;
    this.dispatchEvent(new CustomEvent('state', { detail: { state, ...extra } }));
  }

  /** Opens the connection (and keeps reopening it until close is called). */
  connect() {
    if (this.stopped || this.ws) return;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.setState('connecting');
    let ws;
    try {
      ws = new WebSocket(this.url, SUBPROTOCOL);
    } catch (err) {
      this.setState('closed', { reason: String(err) });
      return;
    }
    this.ws = ws;
    ws.onopen = () => this.restore(ws);
    ws.onmessage = (ev) => this.receive(ev.data);
    ws.onclose = (ev) => this.closed(ws, ev.code, ev.reason);
    // onerror carries no detail in browsers; onclose always follows it.
  }

  /** Re-subscribes every channel after a (re)connect, then reports connected. */
  async restore(ws) {
    try {
      await Promise.all([...this.channels].map((ch) => this.call({ cmd: 'subscribe', channel: ch })
        .catch((err) => {
          if (err.code === 'already_subscribed') return;
          throw err;
        })));
    } catch (err) {
      if (ws === this.ws) ws.close(1000, 'resubscribe failed');
      return;
    }
    if (ws !== this.ws) return;
    this.attempt = 0;
    this.setState('connected');
  }

  closed(ws, code, reason) {
    if (ws !== this.ws) return;
    this.ws = null;
    for (const [, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new HeraldError('disconnected', 'connection closed'));
    }
    this.pending.clear();
    if (this.stopped) {
      this.setState('closed', { code, reason });
      return;
    }
    if (isFinalClose(code)) {
      this.setState('closed', { code, reason });
      return;
    }
    // Exponential backoff with jitter, so that clients cut together (by a
    // server restart, say) do not all come back in the same instant.
    const base = Math.min(this.maxDelay, this.minDelay * 2 ** this.attempt);
    const delay = Math.round(base / 2 + Math.random() * base / 2);
    this.attempt++;
    this.setState('reconnecting', { delay, code, reason });
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  /** Skips the rest of a reconnect delay. */
  reconnectNow() {
    if (this.state === 'reconnecting') this.connect();
  }

  /** Closes the connection for good. */
  close() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    window.removeEventListener('online', this.onOnline);
    if (this.ws) this.ws.close(1000, 'bye');
    else this.setState('closed');
  }

  receive(raw) {
    if (typeof raw !== 'string') return; // this client publishes JSON only
    let msg;
    try {
      msg = JSON.parse(raw);
    } catch {
      return;
    }
    if (msg === null || typeof msg !== 'object') return;
    if (msg.push === 'pub') {
      if (this.channels.has(msg.channel)) {
        this.dispatchEvent(new CustomEvent('publication', { detail: { channel: msg.channel, data: msg.data } }));
      }
      return;
    }
    if (msg.push) return; // a kind this client does not know: ignore it, as the protocol asks
    const p = this.pending.get(msg.id);
    if (!p) return;
    this.pending.delete(msg.id);
    clearTimeout(p.timer);
    if (msg.error) p.reject(new HeraldError(msg.error.code, msg.error.message));
    else p.resolve(msg.result);
  }

  /** Sends a command and resolves with its result, or rejects with a HeraldError. */
  call(cmd) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new HeraldError('disconnected', 'not connected'));
    }
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new HeraldError('timeout', `no reply to ${cmd.cmd} within ${this.callTimeout} ms`));
      }, this.callTimeout);
      this.pending.set(id, { resolve, reject, timer });
      ws.send(JSON.stringify({ id, ...cmd }));
    });
  }

  /**
   * Subscribes to channel, now if connected and again after every reconnect.
   * The promise settles with the server's reply, or at once when offline.
   */
  async subscribe(channel) {
    if (!validChannel(channel)) throw new HeraldError('bad_channel', `invalid channel name "${channel}"`);
    this.channels.add(channel);
    if (!this.isOpen()) return; // restore() will subscribe once connected
    try {
      await this.call({ cmd: 'subscribe', channel });
    } catch (err) {
      if (err.code === 'already_subscribed' || err.code === 'disconnected') return;
      this.channels.delete(channel);
      throw err;
    }
  }

  async unsubscribe(channel) {
    if (!this.channels.delete(channel) || !this.isOpen()) return;
    try {
      await this.call({ cmd: 'unsubscribe', channel });
    } catch (err) {
      if (err.code !== 'not_subscribed' && err.code !== 'disconnected') throw err;
    }
  }

  isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  /** Publishes a JSON value to channel. */
  publish(channel, data) {
    return this.call({ cmd: 'publish', channel, data });
  }
}
