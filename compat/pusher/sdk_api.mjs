// The Pusher HTTP API of a running Herald, driven by the real `pusher` server
// SDK (pusher-http-node) with pusher-js clients on the receiving end, both
// unmodified. Run by pusherapi/sdk_test.go, which starts Herald and passes:
//   HERALD_HOST, HERALD_PORT, APP_ID, APP_KEY, APP_SECRET
// Each step prints "ok - <step>"; the first failure throws, and the script
// exits non-zero.
import assert from "node:assert/strict";
import Pusher from "pusher";
import PusherJS from "pusher-js";

const { HERALD_HOST: host, HERALD_PORT: port, APP_ID: appId, APP_KEY: key, APP_SECRET: secret } = process.env;
const server = new Pusher({ appId, key, secret, host, port, useTLS: false, timeout: 5000 });

const deadline = setTimeout(() => {
  console.error("not ok - timed out");
  process.exit(2);
}, 60_000);

function step(name) {
  console.log("ok - " + name);
}

// waitFor polls cond until it holds (15s: a loaded CI machine).
async function waitFor(what, cond) {
  const end = Date.now() + 15000;
  while (!cond()) {
    if (Date.now() > end) throw new Error("timed out waiting for " + what);
    await new Promise((r) => setTimeout(r, 10));
  }
}

// client connects a pusher-js client that authorizes its channels and
// user with the app's secret, as an app's auth endpoint would.
async function client(user) {
  const c = new PusherJS(key, {
    wsHost: host,
    wsPort: Number(port),
    forceTLS: false,
    enabledTransports: ["ws"],
    cluster: "mt1",
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, cb) => {
        const presence = channelName.startsWith("presence-") ? { user_id: user, user_info: { name: user } } : undefined;
        cb(null, server.authorizeChannel(socketId, channelName, presence));
      },
    },
    userAuthentication: {
      customHandler: ({ socketId }, cb) => cb(null, server.authenticateUser(socketId, { id: user })),
    },
  });
  c.got = [];
  await new Promise((resolve, reject) => {
    c.connection.bind("connected", resolve);
    c.connection.bind("failed", () => reject(new Error("connection failed")));
  });
  return c;
}

async function subscribe(c, name) {
  const ch = c.subscribe(name);
  await new Promise((resolve, reject) => {
    ch.bind("pusher:subscription_succeeded", resolve);
    ch.bind("pusher:subscription_error", (e) => reject(new Error("subscription_error " + JSON.stringify(e))));
  });
  ch.bind_global((event, data) => {
    if (!event.startsWith("pusher")) c.got.push({ channel: name, event, data });
  });
  return ch;
}

// eventually retries check (async, throwing) until it passes (15s): what
// a node records after it answered a subscription (presence) may lag.
async function eventually(check) {
  const end = Date.now() + 15000;
  for (;;) {
    try {
      return await check();
    } catch (e) {
      if (Date.now() > end) throw e;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

async function json(res) {
  return JSON.parse(await res.text());
}

const ann = await client("ann");
const bob = await client("bob");
await subscribe(ann, "news");
await subscribe(bob, "news");
step("two pusher-js clients subscribed to news");

// Trigger, excluding ann's socket: bob gets it, ann does not. Then one for
// both: ann's first event is that one (one channel's events are in order).
let res = await server.trigger("news", "e1", { n: 1 }, { socket_id: ann.connection.socket_id });
assert.equal(res.status, 200);
await waitFor("bob's e1", () => bob.got.some((e) => e.event === "e1"));
await server.trigger(["news"], "e2", { n: 2 });
await waitFor("ann's e2", () => ann.got.some((e) => e.event === "e2"));
assert.deepEqual(ann.got.map((e) => e.event), ["e2"], "the excluded socket got the event");
assert.deepEqual(bob.got.find((e) => e.event === "e1").data, { n: 1 });
step("trigger with socket_id excluded the sender's socket, and reached the other");

// Several channels, with info.
await subscribe(ann, "sports");
res = await server.trigger(["news", "sports"], "multi", "text", { info: "subscription_count" });
const info = await json(res);
assert.deepEqual(info, { channels: { news: { subscription_count: 2 }, sports: { subscription_count: 1 } } });
await waitFor("multi on both channels", () => ann.got.filter((e) => e.event === "multi").length === 2);
step("trigger to two channels with info=subscription_count");

// Batch: in order.
res = await server.triggerBatch([
  { channel: "news", name: "b1", data: { i: 1 } },
  { channel: "news", name: "b2", data: { i: 2 } },
]);
assert.equal(res.status, 200);
await waitFor("b1 and b2", () => bob.got.filter((e) => e.event.startsWith("b")).length === 2);
assert.deepEqual(bob.got.filter((e) => e.event.startsWith("b")).map((e) => e.data.i), [1, 2]);
step("triggerBatch delivered both events, in order");

// Channel queries.
res = await server.get({ path: "/channels/news", params: { info: "subscription_count" } });
assert.deepEqual(await json(res), { occupied: true, subscription_count: 2 });
res = await server.get({ path: "/channels" });
assert.deepEqual(Object.keys((await json(res)).channels).sort(), ["news", "sports"]);
res = await server.get({ path: "/channels/nobody-here" });
assert.deepEqual(await json(res), { occupied: false });
step("channel queries: one channel, the list, an empty channel");

// Presence: members and user_count.
await subscribe(ann, "presence-room");
await subscribe(bob, "presence-room");
await eventually(async () => {
  res = await server.get({ path: "/channels/presence-room/users" });
  assert.deepEqual(await json(res), { users: [{ id: "ann" }, { id: "bob" }] });
});
res = await server.get({ path: "/channels", params: { filter_by_prefix: "presence-", info: "user_count" } });
assert.deepEqual(await json(res), { channels: { "presence-room": { user_count: 2 } } });
res = await server.get({ path: "/channels/presence-room", params: { info: "user_count,subscription_count" } });
assert.deepEqual(await json(res), { occupied: true, subscription_count: 2, user_count: 2 });
step("presence channel: users, user_count");

// A user's events (sendToUser) after pusher:signin.
const signedIn = new Promise((resolve) => bob.user.bind("hello", resolve));
bob.signin();
let hello;
const stop = Date.now() + 15000;
while (!hello && Date.now() < stop) {
  await server.sendToUser("bob", "hello", { to: "bob" });
  hello = await Promise.race([signedIn, new Promise((r) => setTimeout(() => r(undefined), 200))]);
}
assert.deepEqual(hello, { to: "bob" });
step("sendToUser reached the signed-in user");

// Refusals: a wrong secret, an old timestamp (the SDK's clock set back).
const forger = new Pusher({ appId, key, secret: "not-the-secret-at-all", host, port, useTLS: false });
await assert.rejects(forger.trigger("news", "forged", {}), (e) => e.status === 401);
const realNow = Date.now;
Date.now = () => realNow() - 11 * 60 * 1000;
try {
  await assert.rejects(server.trigger("news", "stale", {}), (e) => e.status === 401 && /Timestamp expired/.test(e.body));
} finally {
  Date.now = realNow;
}
await assert.rejects(
  server.trigger("news", "big", "x".repeat(10 * 1024 + 1)),
  (e) => e.status === 413,
);
assert.ok(!bob.got.some((e) => ["forged", "stale", "big"].includes(e.event)));
step("a wrong secret and an old timestamp got 401, data over 10 KiB 413, and nothing was sent");

// terminateUserConnections closes bob's connections, not ann's.
const bobClosed = new Promise((resolve) =>
  bob.connection.bind("state_change", (s) => s.current !== "connected" && resolve(s.current)),
);
res = await server.terminateUserConnections("bob");
assert.equal(res.status, 200);
await bobClosed;
assert.equal(ann.connection.state, "connected");
step("terminateUserConnections closed the user's connection");

ann.disconnect();
bob.disconnect();
clearTimeout(deadline);
console.log("all SDK steps passed");
process.exit(0); // not waiting for idle keep-alive sockets and reconnect timers to lapse
