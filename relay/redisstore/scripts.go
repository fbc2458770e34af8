package redisstore

import "github.com/redis/go-redis/v9"

// The Lua scripts: each store operation that writes is one script, so Redis runs it atomically
// and no other client sees it half done. Times are decimal microseconds computed in Go; the
// scripts only compare and store them, never do arithmetic on them.
//
// Keys a script cannot know in advance (the deliveries a claim finds, the dedupe keys a sweep
// removes, a replayed letter's queue) are built from the prefix in ARGV[1]. They share the hash tag
// of the declared keys, so they live in the same Cluster slot and the scripts work on Cluster too.
//
// Results: 1 means done, 0 means the lease is lost (settle) or the dead letter is absent.

// enqueueScript claims the dedupe key and stores the message once and one delivery per target,
// leased to the caller for the targets given a lease token.
//
//	KEYS[1]         dedupe expiry index (kx)
//	KEYS[2]         the message hash
//	KEYS[3..n+2]    delivery hashes
//	KEYS[n+3..2n+2] due sets of the targets
//	KEYS[2n+3]      the dedupe key, when ARGV[4] is not empty
//	ARGV: received µs, expiry µs, PX ms, dedupe key ("" for none), message, route, message ID,
//	      lease expiry µs, n targets, n delivery IDs, n lease tokens ("" for not leased)
//
// Returns 1 for a duplicate, 0 when stored.
var enqueueScript = redis.NewScript(`
local n = (#ARGV - 8) / 3
-- go-redis retries a command whose reply was lost: when an earlier run of this very call stored
-- the message, say so again rather than failing, or calling the sender's webhook a duplicate.
if redis.call('EXISTS', KEYS[2]) == 1 then
  if redis.call('HGET', KEYS[2], 'msg') == ARGV[5] then
    return 0
  end
  return redis.error_reply('ERR message ' .. ARGV[7] .. ' already stored: message IDs must be unique')
end
for i = 1, n do
  if redis.call('EXISTS', KEYS[2 + i]) == 1 then
    return redis.error_reply('ERR delivery ' .. ARGV[8 + n + i] .. ' already stored: message IDs must be unique')
  end
end
if ARGV[4] ~= '' then
  local k = KEYS[2 * n + 3]
  local held = redis.call('GET', k)
  -- Held until its logical expiry; an expired key that Redis still has (nobody swept it yet,
  -- and the real TTL runs on Redis' clock) counts as absent.
  if held and tonumber(held) > tonumber(ARGV[1]) then
    return 1
  end
  redis.call('SET', k, ARGV[2], 'PX', ARGV[3])
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
end
redis.call('HSET', KEYS[2], 'msg', ARGV[5], 'n', n)
for i = 1, n do
  local lease = ARGV[8 + 2 * n + i]
  if lease == '' then
    redis.call('HSET', KEYS[2 + i], 'mid', ARGV[7], 'target', ARGV[8 + i], 'route', ARGV[6])
    redis.call('ZADD', KEYS[2 + n + i], ARGV[1], ARGV[8 + n + i])
  else
    redis.call('HSET', KEYS[2 + i], 'mid', ARGV[7], 'target', ARGV[8 + i], 'route', ARGV[6], 'attempt', 1, 'lease', lease)
    redis.call('ZADD', KEYS[2 + n + i], ARGV[8], ARGV[8 + n + i])
  end
end
return 0
`)

// claimScript leases the due deliveries of one target: it moves them to the lease expiry in the
// due set (so an unsettled lease simply becomes due again), counts the attempt and sets a lease
// token: the random base from Go plus the position, unique per delivery and claim.
//
//	KEYS[1] due set of the target
//	ARGV: prefix, now µs, lease expiry µs, max, lease token base
//
// Returns the number of due entries without a delivery (dropped), then per delivery: ID, attempt,
// lease, message, last status, last error, and 1 when an earlier lease ran out unsettled.
var claimScript = redis.NewScript(`
local ids = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[2], 'BYSCORE', 'LIMIT', 0, ARGV[4])
local out = {0}
for i, id in ipairs(ids) do
  local d = ARGV[1] .. 'd:' .. id
  local f = redis.call('HMGET', d, 'msg', 'status', 'error', 'lease', 'mid')
  if not f[1] and f[5] then
    f[1] = redis.call('HGET', ARGV[1] .. 'm:' .. f[5], 'msg')
  end
  if not f[1] then
    redis.call('ZREM', KEYS[1], id)
    out[1] = out[1] + 1
  else
    local lease = ARGV[5] .. '.' .. i
    local attempt = redis.call('HINCRBY', d, 'attempt', 1)
    redis.call('HSET', d, 'lease', lease)
    redis.call('ZADD', KEYS[1], ARGV[3], id)
    table.insert(out, id)
    table.insert(out, attempt)
    table.insert(out, lease)
    table.insert(out, f[1])
    table.insert(out, f[2] or '')
    table.insert(out, f[3] or '')
    table.insert(out, f[4] and 1 or 0)
  end
end
return out
`)

// settleCheck starts the scripts that settle a claimed delivery: the stored lease must be the
// caller's, and the target the one whose due set is KEYS[2].
//
//	KEYS[1] delivery hash, KEYS[2] due set of its target
//	ARGV[1] lease, ARGV[2] target, ARGV[3] delivery ID
const settleCheck = `
local f = redis.call('HMGET', KEYS[1], 'lease', 'target')
if ARGV[1] == '' or f[1] ~= ARGV[1] or f[2] ~= ARGV[2] then
  return 0
end
`

// releaseMessage deletes the message hash KEYS[3] when the delivery KEYS[1] is the last one naming
// it. Deliveries of earlier releases carry their message and name none.
const releaseMessage = `
if redis.call('HEXISTS', KEYS[1], 'mid') == 1 and redis.call('HINCRBY', KEYS[3], 'n', -1) <= 0 then
  redis.call('DEL', KEYS[3])
end
`

// ackScript deletes a delivered delivery, and its message with the last one.
//
//	KEYS[3] message hash
var ackScript = redis.NewScript(settleCheck + releaseMessage + `
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[3])
return 1
`)

// retryScript releases the lease, records the failure and makes the delivery due again.
//
//	ARGV[4] due µs, ARGV[5] status, ARGV[6] error
var retryScript = redis.NewScript(settleCheck + `
redis.call('HDEL', KEYS[1], 'lease')
redis.call('HSET', KEYS[1], 'status', ARGV[5], 'error', ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
return 1
`)

// buryScript moves the delivery from its due set to the dead set, recording the failure.
//
//	KEYS[3] dead set; ARGV[4] dead time key (see deadKey), ARGV[5] status, ARGV[6] error
var buryScript = redis.NewScript(settleCheck + `
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('HDEL', KEYS[1], 'lease')
redis.call('HSET', KEYS[1], 'status', ARGV[5], 'error', ARGV[6], 'dead', ARGV[4])
redis.call('ZADD', KEYS[3], 0, ARGV[4] .. ARGV[3])
return 1
`)

// replayScript puts a dead letter back in its target's due set with its attempts reset.
//
//	KEYS[1] delivery hash, KEYS[2] dead set
//	ARGV: prefix, delivery ID, due µs
var replayScript = redis.NewScript(`
local f = redis.call('HMGET', KEYS[1], 'dead', 'target')
if not f[1] then
  return 0
end
redis.call('ZREM', KEYS[2], f[1] .. ARGV[2])
redis.call('HDEL', KEYS[1], 'dead', 'attempt')
redis.call('ZADD', ARGV[1] .. 'q:' .. f[2], ARGV[3], ARGV[2])
return 1
`)

// dropScript deletes a dead letter, and its message with the last delivery naming it.
//
//	KEYS[1] delivery hash, KEYS[2] dead set; ARGV[1] delivery ID, ARGV[2] prefix
var dropScript = redis.NewScript(`
local f = redis.call('HMGET', KEYS[1], 'dead', 'mid')
if not f[1] then
  return 0
end
redis.call('ZREM', KEYS[2], f[1] .. ARGV[1])
if f[2] then
  local m = ARGV[2] .. 'm:' .. f[2]
  if redis.call('HINCRBY', m, 'n', -1) <= 0 then
    redis.call('DEL', m)
  end
end
redis.call('DEL', KEYS[1])
return 1
`)

// sweepScript deletes up to a chunk of dedupe keys whose logical expiry has passed, with their
// index entries, and returns how many. A key Redis already expired by its TTL still counts: its
// index entry is what Sweep removes then.
//
//	KEYS[1] dedupe expiry index (kx)
//	ARGV: prefix, now µs, chunk
var sweepScript = redis.NewScript(`
local keys = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[2], 'BYSCORE', 'LIMIT', 0, ARGV[3])
for _, k in ipairs(keys) do
  redis.call('DEL', ARGV[1] .. 'k:' .. k)
end
if #keys > 0 then
  redis.call('ZREM', KEYS[1], unpack(keys))
end
return #keys
`)

// listDeadScript reads dead letters in order from a position of the dead set, filtered by route
// and target, scanning at most a budget of entries so that Redis is never blocked for long. It
// only reads; one run is one consistent snapshot.
//
//	KEYS[1] dead set
//	ARGV: prefix, start (a ZRANGE BYLEX bound), route, target, limit, budget,
//	      cursor ID ("" for none: then start is used)
//
// Returns a status (-1 the cursor is no dead letter, 0 more may follow, 1 the end was reached),
// the exclusive bound to resume from, then per letter: ID and the fields deadFields names.
var listDeadScript = redis.NewScript(`
local start = ARGV[2]
if ARGV[7] ~= '' then
  local x = redis.call('HGET', ARGV[1] .. 'd:' .. ARGV[7], 'dead')
  if not x then
    return {-1, ''}
  end
  start = '(' .. x .. ARGV[7]
end
local limit, budget = tonumber(ARGV[5]), tonumber(ARGV[6])
local out, found = {0, start}, 0
while budget > 0 do
  local chunk = math.min(budget, 128)
  local members = redis.call('ZRANGE', KEYS[1], start, '+', 'BYLEX', 'LIMIT', 0, chunk)
  budget = budget - #members
  for _, m in ipairs(members) do
    start = '(' .. m
    local id = string.sub(m, 17)
    local d = ARGV[1] .. 'd:' .. id
    local rt = redis.call('HMGET', d, 'route', 'target')
    if (ARGV[3] == '' or rt[1] == ARGV[3]) and (ARGV[4] == '' or rt[2] == ARGV[4]) then
      local f = redis.call('HMGET', d, 'msg', 'target', 'attempt', 'status', 'error', 'dead', 'mid')
      if not f[1] and f[7] then
        f[1] = redis.call('HGET', ARGV[1] .. 'm:' .. f[7], 'msg')
      end
      table.insert(out, id)
      for j = 1, 7 do
        table.insert(out, f[j] or '')
      end
      found = found + 1
      if found == limit then
        out[2] = start
        return out
      end
    end
  end
  if #members < chunk then
    out[1] = 1
    break
  end
end
out[2] = start
return out
`)

// deadFields are the hash fields GetDead reads and listDeadScript returns, in this order.
var deadFields = []string{"msg", "target", "attempt", "status", "error", "dead", "mid"}
