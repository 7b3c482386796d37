package redisbroker

import (
	"crypto/sha1"
	"encoding/hex"

	"github.com/redis/rueidis"
)

// Every write that must be atomic is one Lua script, so no two nodes can
// interleave inside it. Scripts take the time from Redis (TIME), never from
// a node, so that expiry does not depend on the nodes' clocks.
//
// History list elements are "<expiry unix ms> <encoded publication>"; the
// offset of element i is oldest+i, since offsets are consecutive. What is
// PUBLISHed is "<offset> <epoch> <encoded publication>", or "0 <encoded
// publication>" without history: the epoch tells every node that a Redis
// restarted without its data (offsets start over under a new epoch).

const luaNow = `
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`

// luaTrim drops the expired prefix of a history list, as MemoryBroker does:
// elements expire in order, and the first live one stops the scan.
const luaTrim = `
local function trim(key)
  while true do
    local h = redis.call('lindex', key, 0)
    if not h then return end
    local sp = string.find(h, ' ', 1, true)
    if tonumber(string.sub(h, 1, sp - 1)) > now then return end
    redis.call('lpop', key)
  end
end
`

// publishScript appends to history (assigning the offset), remembers the
// idempotency key and PUBLISHes, in one atomic step: two nodes never hand
// out the same offset, and PUBLISH order is offset order.
//
// KEYS: meta hash {t: top, e: epoch}, history list, idempotency key.
// ARGV: encoded publication, history size, history TTL ms, meta TTL ms,
// idempotency window ms (0: none), pub/sub channel, epoch to use if new,
// publish command (publish, or spublish in a Cluster).
// Returns {1, "<offset> <epoch>"} for a duplicate, {0, "<offset> <epoch>"}
// otherwise ("0 " without history).
var publishScript = rueidis.NewLuaScript(publishSrc)

// publishSHA is publishScript's SHA-1, for EVALSHA in a batch (PublishBatch).
var publishSHA = func() string { sum := sha1.Sum([]byte(publishSrc)); return hex.EncodeToString(sum[:]) }()

const publishSrc = luaNow + luaTrim + `
local win = tonumber(ARGV[5])
if win > 0 then
  local r = redis.call('get', KEYS[3])
  if r then return {1, r} end
end
local size = tonumber(ARGV[2])
local res = '0 '
if size > 0 then
  local epoch = redis.call('hget', KEYS[1], 'e')
  if not epoch then
    epoch = ARGV[7]
    redis.call('hset', KEYS[1], 'e', epoch)
    redis.call('del', KEYS[2]) -- of a lost epoch (see the history script)
  end
  local top = string.format('%d', redis.call('hincrby', KEYS[1], 't', 1))
  redis.call('pexpire', KEYS[1], ARGV[4])
  local ttl = tonumber(ARGV[3])
  redis.call('rpush', KEYS[2], string.format('%d', now + ttl) .. ' ' .. ARGV[1])
  redis.call('ltrim', KEYS[2], -size, -1)
  trim(KEYS[2])
  redis.call('pexpire', KEYS[2], ttl)
  res = top .. ' ' .. epoch
  redis.call(ARGV[8], ARGV[6], res .. ' ' .. ARGV[1])
else
  redis.call(ARGV[8], ARGV[6], '0 ' .. ARGV[1])
end
if win > 0 then redis.call('set', KEYS[3], res, 'PX', win) end
return {0, res}
`

// historyScript reads history, creating the meta (and so fixing the epoch)
// on the first read, and trimming what expired. Both scripts drop a history
// list they find without its meta: its epoch is gone, and its publications
// would otherwise be read back at offsets of the new one.
//
// KEYS: meta hash, history list.
// ARGV: epoch to use if new, meta TTL ms, since given (0/1), since offset,
// since epoch, limit (<0: all), reverse (0/1).
// Returns {top, epoch, oldest, first offset returned, elements...}.
var historyScript = rueidis.NewLuaScript(luaNow + luaTrim + `
local epoch = redis.call('hget', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('hset', KEYS[1], 'e', epoch)
  -- The meta outlives the list (its TTL is never shorter), so a list
  -- without a meta belongs to an epoch that was lost (the meta evicted
  -- alone, or deleted): its publications are not of the new epoch.
  redis.call('del', KEYS[2])
end
local mttl = tonumber(ARGV[2])
if redis.call('pttl', KEYS[1]) < mttl then redis.call('pexpire', KEYS[1], mttl) end
local top = tonumber(redis.call('hget', KEYS[1], 't') or '0')
trim(KEYS[2])
local len = redis.call('llen', KEYS[2])
local oldest = 0
if len > 0 then oldest = top - len + 1 end
local out = {string.format('%d', top), epoch, string.format('%d', oldest), '0'}
if ARGV[3] == '1' and ARGV[5] ~= epoch then return out end
local s, e = 0, len - 1
if ARGV[3] == '1' then
  local since = tonumber(ARGV[4])
  if len > 0 and since >= oldest then s = math.min(since - oldest + 1, len) end
end
local limit = tonumber(ARGV[6])
if limit >= 0 and e - s + 1 > limit then
  if ARGV[7] == '1' then s = e - limit + 1 else e = s + limit - 1 end
end
if e >= s then
  out[4] = string.format('%d', oldest + s)
  local items = redis.call('lrange', KEYS[2], s, e)
  for i = 1, #items do out[#out + 1] = items[i] end
end
return out
`)

// Presence of a channel is three keys: a ZSET client -> expiry (unix ms), a
// HASH client -> "<len(user)>:<user><info>", and a HASH user -> number of
// its clients present (for PresenceStats' distinct users). Every script
// first drops the expired entries, keeping the three consistent.
const luaPresence = luaNow + `
local function userOf(v)
  local c = string.find(v, ':', 1, true)
  return string.sub(v, c + 1, c + tonumber(string.sub(v, 1, c - 1)))
end
local function decr(u)
  if u ~= '' and redis.call('hincrby', KEYS[3], u, -1) <= 0 then redis.call('hdel', KEYS[3], u) end
end
local function drop(c)
  local v = redis.call('hget', KEYS[2], c)
  if v then
    decr(userOf(v))
    redis.call('hdel', KEYS[2], c)
  end
end
local gone = redis.call('zrangebyscore', KEYS[1], '-inf', now)
for i = 1, #gone do drop(gone[i]) end
if #gone > 0 then redis.call('zremrangebyscore', KEYS[1], '-inf', now) end
`

// KEYS: expiry zset, info hash, users hash. ARGV: client, user, value, TTL ms.
var presenceAddScript = rueidis.NewLuaScript(luaPresence + `
local old = redis.call('hget', KEYS[2], ARGV[1])
local olduser = nil
if old then olduser = userOf(old) end
if olduser ~= ARGV[2] then
  if olduser then decr(olduser) end
  if ARGV[2] ~= '' then redis.call('hincrby', KEYS[3], ARGV[2], 1) end
end
redis.call('hset', KEYS[2], ARGV[1], ARGV[3])
local ttl = tonumber(ARGV[4])
redis.call('zadd', KEYS[1], now + ttl, ARGV[1])
for i = 1, 3 do redis.call('pexpire', KEYS[i], ttl) end
return 1
`)

// KEYS: expiry zset, info hash, users hash. ARGV: client.
var presenceRemoveScript = rueidis.NewLuaScript(luaPresence + `
drop(ARGV[1])
redis.call('zrem', KEYS[1], ARGV[1])
return 1
`)

// KEYS: expiry zset, info hash, users hash. Returns HGETALL of the info hash.
var presenceGetScript = rueidis.NewLuaScript(luaPresence + `
return redis.call('hgetall', KEYS[2])
`)

// KEYS: expiry zset, info hash, users hash. Returns {clients, users}.
var presenceStatsScript = rueidis.NewLuaScript(luaPresence + `
return {redis.call('hlen', KEYS[2]), redis.call('hlen', KEYS[3])}
`)

// The webhooks' event store (events.go). Every key it uses carries the
// hash tag {webhooks}, so that one script may touch the outbox, a key's
// holders and a node's keys in one Cluster slot, and every script declares
// each key it touches in KEYS. A holder set or a node's key set that
// becomes empty is deleted by Redis, so EXISTS tells "no holder left".

// eventsHoldScript adds a holder and appends the on event if there was
// none, in one step.
//
// KEYS: the key's holder set, the node's key set, the outbox stream.
// ARGV: node, key, on event (JSON).
// Returns 1 if it appended, 0 if not.
var eventsHoldScript = rueidis.NewLuaScript(`
if redis.call('sadd', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('sadd', KEYS[2], ARGV[2])
if redis.call('scard', KEYS[1]) > 1 then return 0 end
redis.call('xadd', KEYS[3], '*', 'e', ARGV[3])
return 1
`)

// eventsReleaseScript removes a holder and appends the off event if it was
// the last one, in one step.
//
// KEYS: the key's holder set, the node's key set, the outbox stream.
// ARGV: node, key, off event (JSON).
// Returns 1 if it appended, 0 if not.
var eventsReleaseScript = rueidis.NewLuaScript(`
if redis.call('srem', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('srem', KEYS[2], ARGV[2])
if redis.call('exists', KEYS[1]) == 1 then return 0 end
redis.call('xadd', KEYS[3], '*', 'e', ARGV[3])
return 1
`)

// eventsAppendScript appends events in one step, so that the events of
// one Append are contiguous in the outbox.
//
// KEYS: the outbox stream. ARGV: events (JSON).
var eventsAppendScript = rueidis.NewLuaScript(`
for i = 1, #ARGV do redis.call('xadd', KEYS[1], '*', 'e', ARGV[i]) end
return #ARGV
`)

// eventsBeatScript records that a node is alive until Redis' now + ttl.
//
// KEYS: the beats zset. ARGV: node, ttl ms.
var eventsBeatScript = rueidis.NewLuaScript(luaNow + `
redis.call('zadd', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return 1
`)

// eventsExpiredScript lists the nodes whose beat has expired, by Redis'
// clock, oldest first.
//
// KEYS: the beats zset.
var eventsExpiredScript = rueidis.NewLuaScript(luaNow + `
return redis.call('zrangebyscore', KEYS[1], '-inf', now)
`)

// eventsReapScript releases some keys of a node that is being reaped,
// appending the off event of each key that has no holder left. It runs
// after Go read the node's keys and built their off events; meanwhile
// other nodes may have held or released those keys, so each key is
// checked again here. When only expired nodes are reaped (ARGV[2] == "1"),
// a node that beat again, or that another reaper finished, is left alone.
// Once the node holds nothing, its beat is removed.
//
// KEYS: the beats zset, the outbox stream, the node's key set, then the
// holder set of each key.
// ARGV: node, "1" to reap only if expired (else "0"), then per key of
// KEYS[4..]: the key, its off event (JSON).
// Returns -1 if the node is not (or no longer) expired, 0 if it still
// holds keys (not in this call's list: read them and call again), 1 once
// it holds nothing and its beat is gone.
var eventsReapScript = rueidis.NewLuaScript(luaNow + `
if ARGV[2] == '1' then
  local s = redis.call('zscore', KEYS[1], ARGV[1])
  if not s or tonumber(s) > now then return -1 end
end
for i = 4, #KEYS do
  local key, e = ARGV[2 * i - 5], ARGV[2 * i - 4]
  if redis.call('srem', KEYS[i], ARGV[1]) == 1 and redis.call('exists', KEYS[i]) == 0 then
    redis.call('xadd', KEYS[2], '*', 'e', e)
  end
  redis.call('srem', KEYS[3], key)
end
if redis.call('exists', KEYS[3]) == 1 then return 0 end
redis.call('zrem', KEYS[1], ARGV[1])
return 1
`)

// eventsLeadScript takes the lead if no node has it, or extends it if
// this node has it, in one step; the lead expires by Redis' clock.
//
// KEYS: the lead string. ARGV: node, ttl ms. Returns 1 if node leads.
var eventsLeadScript = rueidis.NewLuaScript(`
local v = redis.call('get', KEYS[1])
if not v then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if v ~= ARGV[1] then return 0 end
redis.call('pexpire', KEYS[1], ARGV[2])
return 1
`)
