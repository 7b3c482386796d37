// Small helpers for the tests: every wait is bounded, and only waitFor
// polls (for state that no event reports, such as Subscription.state).

/** Resolves like promise, or rejects after ms; the timer never outlives it. */
export async function within(ms, what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Collects values pushed by callbacks; await inbox.count(n) to wait for them. */
export class Inbox {
  constructor() {
    this.items = [];
    this._waiters = [];
  }

  /** A callback that adds its arguments (one value, or an array of them). */
  get push() {
    return (...args) => {
      this.items.push(args.length === 1 ? args[0] : args);
      for (const w of [...this._waiters]) w();
    };
  }

  /** Resolves with the items once there are at least n of them. */
  count(n, ms = 5000, what = `${n} items`) {
    return this.until(() => this.items.length >= n, ms, what).then(() => this.items);
  }

  /** Resolves with the first item (counting from `from`) that matches pred. */
  find(pred, ms = 5000, what = 'a matching item', from = 0) {
    let found;
    return this.until(() => (found = this.items.slice(from).find(pred)) !== undefined, ms, what).then(() => found);
  }

  until(cond, ms, what) {
    if (cond()) return Promise.resolve();
    let check;
    const p = new Promise((resolve) => {
      check = () => cond() && resolve();
    });
    this._waiters.push(check);
    return within(ms, what, p).finally(() => this._waiters.splice(this._waiters.indexOf(check), 1));
  }
}

/** An Inbox of a client's state events. */
export function recordStates(client) {
  const inbox = new Inbox();
  client.on('state', inbox.push);
  return inbox;
}

/** A channel name no other test (or earlier run on the same server) uses. */
export function uniq(prefix) {
  return `${prefix}${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}

/** Resolves once cond() is true, checking every 10 ms; rejects after ms. */
export function waitFor(cond, ms, what) {
  let timer;
  return within(
    ms,
    what,
    new Promise((resolve) => {
      const check = () => (cond() ? resolve() : (timer = setTimeout(check, 10)));
      check();
    }),
  ).finally(() => clearTimeout(timer));
}
