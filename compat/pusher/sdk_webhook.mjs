// Herald's webhooks in Pusher's format, received by an HTTP server here and
// verified with the real `pusher` SDK's webhook(request).isValid(); pusher-js
// clients make the events happen. Run by pusherapi/sdk_test.go:
//   1. this script listens and prints "PORT <n>";
//   2. the test starts Herald with its webhooks going to that port, then
//      writes one JSON line to stdin: {host, port, appId, key, secret};
//   3. the script connects, makes each kind of event happen, and exits 0
//      once every expected event came in a call the SDK found valid.
import assert from "node:assert/strict";
import http from "node:http";
import readline from "node:readline";
import Pusher from "pusher";
import PusherJS from "pusher-js";

const deadline = setTimeout(() => {
  console.error("not ok - timed out; events so far: " + JSON.stringify(events));
  process.exit(2);
}, 60_000);

let server; // the SDK, once the app's credentials are known
const events = []; // every event of every valid call
let invalid = 0; // calls the SDK refused

const receiver = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const rawBody = Buffer.concat(chunks).toString("utf8");
    const hook = server.webhook({ headers: req.headers, rawBody });
    if (!hook.isValid()) {
      invalid++;
      res.writeHead(401).end();
      return;
    }
    events.push(...hook.getEvents());
    res.writeHead(200).end();
  });
});
await new Promise((r) => receiver.listen(0, "127.0.0.1", r));
console.log("PORT " + receiver.address().port);

const rl = readline.createInterface({ input: process.stdin });
const cfg = JSON.parse(await new Promise((r) => rl.once("line", r)));
rl.close();
server = new Pusher({ appId: cfg.appId, key: cfg.key, secret: cfg.secret, host: cfg.host, port: cfg.port, useTLS: false });

function step(name) {
  console.log("ok - " + name);
}

async function waitFor(what, cond) {
  const end = Date.now() + 15000;
  while (!cond()) {
    if (Date.now() > end) throw new Error("timed out waiting for " + what + "; got " + JSON.stringify(events));
    await new Promise((r) => setTimeout(r, 20));
  }
}

const has = (name, fields = {}) =>
  events.some((e) => e.name === name && Object.entries(fields).every(([k, v]) => e[k] === v));

async function client(user) {
  const c = new PusherJS(cfg.key, {
    wsHost: cfg.host,
    wsPort: Number(cfg.port),
    forceTLS: false,
    enabledTransports: ["ws"],
    cluster: "mt1",
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, cb) => {
        const presence = channelName.startsWith("presence-") ? { user_id: user, user_info: { name: user } } : undefined;
        cb(null, server.authorizeChannel(socketId, channelName, presence));
      },
    },
  });
  await new Promise((resolve) => c.connection.bind("connected", resolve));
  return c;
}

async function subscribe(c, name) {
  const ch = c.subscribe(name);
  await new Promise((resolve, reject) => {
    ch.bind("pusher:subscription_succeeded", resolve);
    ch.bind("pusher:cache_miss", resolve);
    ch.bind("pusher:subscription_error", (e) => reject(new Error(JSON.stringify(e))));
  });
  return ch;
}

// A forged call first: the SDK must refuse it.
const forged = JSON.stringify({ time_ms: Date.now(), events: [{ name: "channel_occupied", channel: "forged" }] });
await fetch(`http://127.0.0.1:${receiver.address().port}/`, {
  method: "POST",
  headers: { "content-type": "application/json", "x-pusher-key": cfg.key, "x-pusher-signature": "0".repeat(64) },
  body: forged,
});
assert.equal(invalid, 1, "the SDK accepted a forged webhook");
step("a forged webhook is refused by isValid()");

const ann = await client("ann");
await subscribe(ann, "news");
await waitFor("channel_occupied", () => has("channel_occupied", { channel: "news" }));
step("channel_occupied");

const room = await subscribe(ann, "presence-room");
await waitFor("member_added ann", () => has("member_added", { channel: "presence-room", user_id: "ann" }));
step("member_added");

room.trigger("client-typing", { who: "ann" });
await waitFor("client_event", () => has("client_event", { channel: "presence-room", event: "client-typing" }));
const ce = events.find((e) => e.name === "client_event");
assert.deepEqual(JSON.parse(ce.data), { who: "ann" });
assert.equal(ce.socket_id, ann.connection.socket_id);
assert.equal(ce.user_id, "ann");
step("client_event, with data, socket_id and user_id");

await subscribe(ann, "cache-empty");
await waitFor("cache_miss", () => has("cache_miss", { channel: "cache-empty" }));
step("cache_miss");

// Bob in two tabs: one member, as Pusher counts them (per user).
const count = (name, user) => events.filter((e) => e.name === name && e.user_id === user).length;
const bob = await client("bob");
await subscribe(bob, "presence-room");
await waitFor("member_added bob", () => has("member_added", { channel: "presence-room", user_id: "bob" }));
const bob2 = await client("bob");
await subscribe(bob2, "presence-room");
bob.disconnect();
// A marker: once ann's client event is in, the outbox has passed bob's
// second join and first leave, which must have made no event.
room.trigger("client-marker", {});
await waitFor("the marker", () => has("client_event", { event: "client-marker" }));
assert.equal(count("member_added", "bob"), 1, "bob's second connection made a second member_added");
assert.equal(count("member_removed", "bob"), 0, "bob left while his second connection stays");
bob2.disconnect();
await waitFor("member_removed bob", () => has("member_removed", { channel: "presence-room", user_id: "bob" }));
assert.equal(count("member_added", "bob"), 1);
step("member_added and member_removed per user: a second connection of a member is no new member");

ann.unsubscribe("news");
await waitFor("channel_vacated", () => has("channel_vacated", { channel: "news" }));
step("channel_vacated");

assert.equal(invalid, 1, "a call from Herald failed isValid()");
assert.equal(count("member_added", "bob"), 1);
assert.equal(count("member_removed", "bob"), 1);
assert.ok(!events.some((e) => e.channel === "forged"));
ann.disconnect();
receiver.close();
clearTimeout(deadline);
console.log("all webhook steps passed: " + events.length + " events, all in valid calls");
process.exit(0);
