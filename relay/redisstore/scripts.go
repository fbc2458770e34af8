package redisstore

import "github.com/redis/go-redis/v9"

// The Lua scripts: each store operation that writes is one script, so Redis runs it atomically
// and no other client sees it half done. Times are decimal microseconds computed in Go; the
// scripts only compare and store them, never do arithmetic on them.
//
// The scripts that write declare the keys they touch (Go reads first what it must know to name
// them), so that during a Cluster slot migration Redis refuses a run as a whole rather than
// failing it halfway. The few keys a script cannot know in advance (the dedupe keys a sweep
// removes, the message a duplicate is counted on, what a listing reads) are built from the shard's
// key base; they share its hash tag, so they are in the same slot.
//
// Results: 1 means done, 0 means the lease is lost (settle) or the dead letter is absent.

// enqueueScript claims the dedupe key and stores the message once and one delivery per target,
// leased to the caller for the targets given a lease token. With history (ARGV[10] not empty) the
// dedupe key's value is its expiry, a space and the message ID, the message joins the history
// index and its job's, and a duplicate is counted on the message holding the key; without, the
// value is the expiry alone, as releases before history wrote and read it. With ARGV[12] set
// (MinReplicas) a run that writes nothing else bumps the w key (replicas.go).
//
// Every key it touches is declared, but the message a duplicate is counted on: so that while a
// Cluster slot migrates, Redis refuses the whole run (TRYAGAIN, ASK) rather than a part of it.
//
//	KEYS[1] dedupe expiry index (kx), KEYS[2] the message hash, KEYS[3] history index, KEYS[4]
//	its job's index, KEYS[5] the w key, KEYS[6] the dedupe key (kx again when ARGV[4] is empty),
//	KEYS[7..n+6] delivery hashes, KEYS[n+7..2n+6] due sets of the targets
//	ARGV: received µs, expiry µs, PX ms, dedupe key ("" for none), message, route, message ID,
//	      lease expiry µs, prefix, history member ("" with history off), job ID, sync ("" or "1"),
//	      n targets, n delivery IDs, n lease tokens ("" for not leased)
//
// Returns 1 for a duplicate, 0 when stored.
var enqueueScript = redis.NewScript(`
local n = (#ARGV - 12) / 3
local function unchanged(r)
  if ARGV[12] ~= '' then
    redis.call('INCR', KEYS[5])
  end
  return r
end
-- go-redis retries a command whose reply was lost: when an earlier run of this very call stored
-- the message, say so again rather than failing, or calling the sender's webhook a duplicate.
if redis.call('EXISTS', KEYS[2]) == 1 then
  if redis.call('HGET', KEYS[2], 'msg') == ARGV[5] then
    return unchanged(0)
  end
  return redis.error_reply('ERR message ' .. ARGV[7] .. ' already stored: message IDs must be unique')
end
for i = 1, n do
  if redis.call('EXISTS', KEYS[6 + i]) == 1 then
    return redis.error_reply('ERR delivery ' .. ARGV[12 + n + i] .. ' already stored: message IDs must be unique')
  end
end
if ARGV[4] ~= '' then
  local held = redis.call('GET', KEYS[6])
  -- Held until its logical expiry; an expired key that Redis still has (nobody swept it yet,
  -- and the real TTL runs on Redis' clock) counts as absent.
  if held then
    local exp, holder = string.match(held, '^(%-?%d+) ?(.*)$')
    if exp and tonumber(exp) > tonumber(ARGV[1]) then
      if ARGV[10] ~= '' and holder ~= '' then
        local m = ARGV[9] .. 'm:' .. holder
        if redis.call('EXISTS', m) == 1 then
          redis.call('HINCRBY', m, 'dups', 1)
          redis.call('HSET', m, 'dup_at', ARGV[1])
        end
      end
      return unchanged(1)
    end
  end
  if ARGV[10] ~= '' then
    redis.call('SET', KEYS[6], ARGV[2] .. ' ' .. ARGV[7], 'PX', ARGV[3])
  else
    redis.call('SET', KEYS[6], ARGV[2], 'PX', ARGV[3])
  end
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
end
redis.call('HSET', KEYS[2], 'msg', ARGV[5], 'n', n)
if ARGV[10] ~= '' then
  redis.call('ZADD', KEYS[3], 0, ARGV[10])
  if ARGV[11] ~= '' then
    redis.call('ZADD', KEYS[4], 0, ARGV[10])
  end
end
for i = 1, n do
  local lease = ARGV[12 + 2 * n + i]
  if lease == '' then
    redis.call('HSET', KEYS[6 + i], 'mid', ARGV[7], 'target', ARGV[12 + i], 'route', ARGV[6])
    redis.call('ZADD', KEYS[6 + n + i], ARGV[1], ARGV[12 + n + i])
  else
    redis.call('HSET', KEYS[6 + i], 'mid', ARGV[7], 'target', ARGV[12 + i], 'route', ARGV[6], 'attempt', 1, 'lease', lease)
    redis.call('ZADD', KEYS[6 + n + i], ARGV[8], ARGV[12 + n + i])
  end
end
return 0
`)

// claimScript leases deliveries of one target that Claim found due (ZRANGE, in Go, so that the
// script can declare every key it touches): those still due, since another claim may have taken
// them meanwhile. It moves them to the lease expiry in the due set (so an unsettled lease simply
// becomes due again), counts the attempt and sets a lease token: the base from Go plus the
// position, unique per delivery and claim.
//
//	KEYS[1] due set of the target, KEYS[2..n+1] the delivery hashes, KEYS[n+2..2n+1] their messages
//	ARGV: now µs, lease expiry µs, lease token base, n delivery IDs
//
// Returns the number of due entries without a delivery (dropped), then per delivery: ID, attempt,
// lease, message, last status, last error, and 1 when an earlier lease ran out unsettled.
var claimScript = redis.NewScript(`
local n = #ARGV - 3
local out = {0}
for i = 1, n do
  local id = ARGV[3 + i]
  local due = redis.call('ZSCORE', KEYS[1], id)
  if due and tonumber(due) <= tonumber(ARGV[1]) then
    local d = KEYS[1 + i]
    local f = redis.call('HMGET', d, 'msg', 'status', 'error', 'lease', 'mid')
    if not f[1] and f[5] then
      f[1] = redis.call('HGET', KEYS[1 + n + i], 'msg')
    end
    if not f[1] then
      redis.call('ZREM', KEYS[1], id)
      out[1] = out[1] + 1
    else
      local lease = ARGV[3] .. '.' .. i
      local attempt = redis.call('HINCRBY', d, 'attempt', 1)
      redis.call('HSET', d, 'lease', lease)
      redis.call('ZADD', KEYS[1], ARGV[2], id)
      table.insert(out, id)
      table.insert(out, attempt)
      table.insert(out, lease)
      table.insert(out, f[1])
      table.insert(out, f[2] or '')
      table.insert(out, f[3] or '')
      table.insert(out, f[4] and 1 or 0)
    end
  end
end
return out
`)

// settleCheck starts the scripts that settle a claimed delivery: the stored lease must be the
// caller's, and the target the one whose due set is KEYS[2]. With history the attempt that
// settles it (ARGV[4], "" for none) joins its attempts list.
//
//	KEYS[1] delivery hash, KEYS[2] due set of its target, KEYS[3] its attempts list
//	ARGV[1] lease, ARGV[2] target, ARGV[3] delivery ID, ARGV[4] encoded attempt or ""
const settleCheck = `
local f = redis.call('HMGET', KEYS[1], 'lease', 'target')
if ARGV[1] == '' or f[1] ~= ARGV[1] or f[2] ~= ARGV[2] then
  return 0
end
if ARGV[4] ~= '' then
  redis.call('RPUSH', KEYS[3], ARGV[4])
end
`

// ackScript deletes a delivered delivery, and its message with the last one naming it
// (deliveries of earlier releases carry their message and name none). With history (ARGV[5], the
// delivered time, not empty) it keeps the delivery, marked done, out of the due set.
//
//	KEYS[4] message hash
var ackScript = redis.NewScript(settleCheck + `
redis.call('ZREM', KEYS[2], ARGV[3])
if ARGV[5] ~= '' then
  redis.call('HDEL', KEYS[1], 'lease')
  redis.call('HSET', KEYS[1], 'done', ARGV[5])
  return 1
end
if redis.call('HEXISTS', KEYS[1], 'mid') == 1 and redis.call('HINCRBY', KEYS[4], 'n', -1) <= 0 then
  redis.call('DEL', KEYS[4])
end
redis.call('DEL', KEYS[1])
return 1
`)

// retryScript releases the lease, records the failure and makes the delivery due again.
//
//	ARGV[5] due µs, ARGV[6] status, ARGV[7] error
var retryScript = redis.NewScript(settleCheck + `
redis.call('HDEL', KEYS[1], 'lease')
redis.call('HSET', KEYS[1], 'status', ARGV[6], 'error', ARGV[7])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[3])
return 1
`)

// buryScript moves the delivery from its due set to the dead set, recording the failure.
//
//	KEYS[4] dead set; ARGV[5] dead time key (see deadKey), ARGV[6] status, ARGV[7] error
var buryScript = redis.NewScript(settleCheck + `
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('HDEL', KEYS[1], 'lease')
redis.call('HSET', KEYS[1], 'status', ARGV[6], 'error', ARGV[7], 'dead', ARGV[5])
redis.call('ZADD', KEYS[4], 0, ARGV[5] .. ARGV[3])
return 1
`)

// replayScript puts a dead letter back in its target's due set with its attempts reset.
//
//	KEYS[1] delivery hash, KEYS[2] dead set, KEYS[3] due set of its target
//	ARGV: delivery ID, due µs, target (read before: the script checks it)
var replayScript = redis.NewScript(`
local f = redis.call('HMGET', KEYS[1], 'dead', 'target')
if not f[1] or f[2] ~= ARGV[3] then
  return 0
end
redis.call('ZREM', KEYS[2], f[1] .. ARGV[1])
redis.call('HDEL', KEYS[1], 'dead', 'attempt')
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
return 1
`)

// dropScript deletes a dead letter with its attempts, and its message with the last delivery
// naming it; with history (ARGV[2] not empty) the message stays until the sweep.
//
//	KEYS[1] delivery hash, KEYS[2] dead set, KEYS[3] its attempts, KEYS[4] its message (read
//	before; KEYS[1] again when it names none)
//	ARGV[1] delivery ID, ARGV[2] history
var dropScript = redis.NewScript(`
local f = redis.call('HMGET', KEYS[1], 'dead', 'mid')
if not f[1] then
  return 0
end
redis.call('ZREM', KEYS[2], f[1] .. ARGV[1])
redis.call('DEL', KEYS[3])
if f[2] and ARGV[2] == '' then
  if redis.call('HINCRBY', KEYS[4], 'n', -1) <= 0 then
    redis.call('DEL', KEYS[4])
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
// only reads; one run is one consistent snapshot of its shard.
//
//	KEYS[1] dead set
//	ARGV: prefix, start (a ZRANGE BYLEX bound), route, target, limit, budget
//
// Returns a status (0 more may follow, 1 the end was reached), the exclusive bound to resume
// from, then per letter: ID and the fields deadFields names.
var listDeadScript = redis.NewScript(`
local start = ARGV[2]
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

// redeliverScript queues a delivered or dead delivery again, due at ARGV[2], keeping its attempt
// count. Returns 1 when done, 0 when the delivery is live, -1 when there is none.
//
//	KEYS[1] delivery hash, KEYS[2] dead set, KEYS[3] due set of its target
//	ARGV: delivery ID, due µs
var redeliverScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
local f = redis.call('HMGET', KEYS[1], 'dead', 'done')
if f[1] then
  redis.call('ZREM', KEYS[2], f[1] .. ARGV[1])
  redis.call('HDEL', KEYS[1], 'dead')
elseif f[2] then
  redis.call('HDEL', KEYS[1], 'done')
else
  return 0
end
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
return 1
`)

// sweepMessageScript deletes a message of history with its deliveries, their attempts and its
// index entries, unless one of its deliveries is live or dead. Returns 1 when deleted.
//
//	KEYS[1] message hash, KEYS[2] history index, KEYS[3] its job's index (or KEYS[2] again),
//	KEYS[4..n+3] delivery hashes, KEYS[n+4..2n+3] their attempts lists
//	ARGV: index member, n
var sweepMessageScript = redis.NewScript(`
local n = tonumber(ARGV[2])
for i = 1, n do
  local f = redis.call('HMGET', KEYS[3 + i], 'target', 'done', 'dead')
  if f[1] and (not f[2] or f[3]) then
    return 0
  end
end
for i = 1, 2 * n do
  redis.call('DEL', KEYS[3 + i])
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
`)
