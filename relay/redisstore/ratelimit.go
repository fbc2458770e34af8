package redisstore

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hookrelay/hookrelay/filters"
	"github.com/hookrelay/hookrelay/relay"
)

// maxRate is the highest rate a RateLimiter takes: it counts in whole microseconds, one request
// every microsecond at most. One Redis runs far fewer scripts than that in a second.
const maxRate = 1e6

// maxRedisSpan bounds a bucket's refill time, in microseconds: about 100 years. A rate so tiny that
// its bucket would take longer is raised to refill in that time, keeping every time in the script
// an integer below 2^53, which a Lua double holds exactly.
const maxRedisSpan = 100 * 365.25 * 24 * 3600 * 1e6

// unavailableRetry is the Retry-After sent when Redis cannot be reached.
const unavailableRetry = 5 * time.Second

// RateLimiter is filters.RateLimiter shared through Redis by the replicas of a relay, so that a
// route's rate, and an address's, hold in all of them together rather than in each. It has the
// same semantics: relay.RateLimited with the time until the request would pass; a refused request
// spends nothing, neither its address's allowance nor the route's; the per-address rate is checked
// first.
//
// Each limit is a GCRA cell (generic cell rate algorithm: a token bucket kept as one number, the
// theoretical arrival time of the next request, TAT), checked and updated by one Lua script, so
// concurrent requests from any replica take exactly the allowance there is. Its keys are
//
//	{<prefix>:rl:<route>}:ip    a sorted set: each sender (an IPv4 address, or an IPv6 prefix
//	                            such as 2001:db8:1:2::/64) scored by its TAT
//	{<prefix>:rl:<route>}:all   the route's TAT
//
// hash-tagged on the route so that they are in one Redis Cluster slot, as one script needs, and
// routes spread over the slots; the prefix follows the store's rule (keyPrefix). A sender whose
// bucket is full again is removed, which loses nothing; the set holds at most MaxTracked senders,
// beyond which the one whose bucket is fullest is dropped (forgiving it a little), so that a flood
// of addresses cannot fill the Redis that also holds the queue. Keys expire when every bucket in
// them is full. Senders are grouped as filters.RateConfig.Sender says; requests without an address
// share one bucket ("::").
//
// Times come from the replica's clock (Now) in whole microseconds: replicas' clocks must agree,
// and a replica whose clock is ahead by d spends allowance up to d early. A rate's interval is
// rounded to a whole microsecond: exact when 10^6/rate is whole, within 0.5% up to 10^4 per second.
//
// When Redis cannot be reached, or fails the script, Admit returns relay.KindUnavailable (503,
// Retry-After 5 s), not a refusal and not an admission. A 429 would blame the sender for our
// outage; admitting unlimited would let a Redis outage lift every limit, and the relay's store,
// on the same Redis, could not store the webhook anyway. A sender retries 503 as it does 429. Admit
// waits no longer than the relay waits for a store operation (relay.DefaultStoreTimeout), the
// request's context, or the client's own limits allow.
type RateLimiter struct {
	client    redis.UniversalClient
	c         filters.RateConfig // resolved
	ipKey     string             // the sorted set of senders
	routeKey  string
	ipCell    [2]int64 // emission interval, burst × interval; µs. Zero: no per-address rate
	routeCell [2]int64 // zero: no route rate
}

var _ relay.Guard = (*RateLimiter)(nil)

// NewRateLimiter returns the limiter of c (validated by c.Resolve) for the route named route, on
// client with the store's key prefix: replicas share a limit when they share both names, and two
// routes must not. Rates above maxRate are refused too. With neither rate set, every request is
// admitted without asking Redis.
func NewRateLimiter(client redis.UniversalClient, prefix, route string, c filters.RateConfig) (*RateLimiter, error) {
	c, err := c.Resolve()
	if err != nil {
		return nil, err
	}
	if prefix, err = keyPrefix(prefix); err != nil {
		return nil, fmt.Errorf("rate limit: %w", err)
	}
	for _, r := range []struct {
		what string
		v    float64
	}{{"per-address", c.PerIP}, {"route", c.Route}} {
		if r.v > maxRate {
			return nil, fmt.Errorf("rate limit: %s rate %v is above %v, the most a Redis-shared limiter counts", r.what, r.v, float64(maxRate))
		}
	}
	switch {
	case route == "":
		return nil, errors.New("rate limit: a Redis-shared limiter needs the route's name")
	case strings.ContainsAny(route, "{}"):
		return nil, fmt.Errorf("rate limit: route name %q must not contain braces", route)
	case client == nil && (c.PerIP > 0 || c.Route > 0):
		return nil, errors.New("rate limit: no Redis client")
	}
	tag := "{" + prefix + ":rl:" + route + "}"
	rl := &RateLimiter{client: client, c: c, ipKey: tag + ":ip", routeKey: tag + ":all"}
	if c.PerIP > 0 {
		rl.ipCell = gcraCell(c.PerIP, c.PerIPBurst)
	}
	if c.Route > 0 {
		rl.routeCell = gcraCell(c.Route, c.RouteBurst)
	}
	return rl, nil
}

// gcraCell returns a cell's emission interval and its span, burst intervals: the time a bucket
// takes to refill from empty. r is in (0, maxRate].
func gcraCell(r float64, burst int) [2]int64 {
	interval := max(1, math.Round(1e6/r))
	if interval*float64(burst) > maxRedisSpan {
		interval = max(1, math.Floor(maxRedisSpan/float64(burst)))
	}
	if interval*float64(burst) > maxRedisSpan { // a burst of more than 3e15: the span is the cap
		return [2]int64{1, maxRedisSpan}
	}
	return [2]int64{int64(interval), int64(interval) * int64(burst)}
}

// gcraScript checks the sender's cell and the route's, and only when both admit moves each one's
// theoretical arrival time (TAT) on by its interval. A refusal writes nothing: a sender retrying
// too early does not push its next slot further away, and a per-address refusal leaves the route
// alone.
//
// KEYS[1] is the senders' sorted set, KEYS[2] the route's key. ARGV[1] is now; ARGV[2] the sender;
// ARGV[3], ARGV[4] the sender cell's interval and span (0, 0: no per-address rate); ARGV[5] the
// most senders kept; ARGV[6], ARGV[7] the route cell's (0, 0: none); all times in µs. It returns
// {0, 0} when admitted, else {1 (sender) or 2 (route), µs until that cell would admit}. A cell
// admits when its TAT, once the request is added, is at most a span ahead of now. Every number is
// an integer below 2^53, exact in a Lua double.
var gcraScript = redis.NewScript(`
local now = tonumber(ARGV[1])
local ipInterval, ipSpan = tonumber(ARGV[3]), tonumber(ARGV[4])
local rInterval, rSpan = tonumber(ARGV[6]), tonumber(ARGV[7])
-- take returns a cell's TAT once the request is added, or nil and the wait until it would admit.
local function take(tat, interval, span)
  tat = math.max(tat or now, now) + interval
  if tat - now > span then
    return nil, tat - span - now
  end
  return tat
end
local ipTat, rTat, wait
if ipInterval > 0 then
  -- Senders whose bucket is full again are the same as absent ones.
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  ipTat, wait = take(tonumber(redis.call('ZSCORE', KEYS[1], ARGV[2])), ipInterval, ipSpan)
  if not ipTat then return {1, wait} end
end
if rInterval > 0 then
  rTat, wait = take(tonumber(redis.call('GET', KEYS[2])), rInterval, rSpan)
  if not rTat then return {2, wait} end
end
if ipTat then
  redis.call('ZADD', KEYS[1], string.format('%.0f', ipTat), ARGV[2])
  local n = redis.call('ZCARD', KEYS[1])
  local cap = tonumber(ARGV[5])
  if n > cap then
    redis.call('ZPOPMIN', KEYS[1], n - cap)
  end
  -- The set lives until its last bucket is full again.
  local ttl = math.ceil((ipTat - now) / 1000)
  if redis.call('PTTL', KEYS[1]) < ttl then
    redis.call('PEXPIRE', KEYS[1], ttl)
  end
end
if rTat then
  redis.call('SET', KEYS[2], string.format('%.0f', rTat), 'PX', math.ceil((rTat - now) / 1000))
end
return {0, 0}
`)

// Admit spends one request of client's allowance and of the route's, or refuses the request with
// relay.RateLimited and spends neither. It fails with relay.KindUnavailable when Redis does.
func (rl *RateLimiter) Admit(r *http.Request, client netip.Addr) error {
	if rl.ipCell[0] == 0 && rl.routeCell[0] == 0 {
		return nil
	}
	sender := ""
	if rl.ipCell[0] != 0 {
		// An IPv6 sender is its prefix; requests without an address share "::".
		switch a := rl.c.Sender(client); {
		case !a.IsValid():
			sender = "::"
		case a.Is6() && rl.c.IPv6Prefix < 128:
			sender = a.String() + "/" + strconv.Itoa(rl.c.IPv6Prefix)
		default:
			sender = a.String()
		}
	}
	ctx := context.Background()
	if r != nil {
		ctx = r.Context()
	}
	ctx, cancel := context.WithTimeout(ctx, relay.DefaultStoreTimeout)
	defer cancel()
	res, err := gcraScript.Run(ctx, rl.client, []string{rl.ipKey, rl.routeKey}, rl.c.Now().UnixMicro(), sender,
		rl.ipCell[0], rl.ipCell[1], rl.c.MaxTracked, rl.routeCell[0], rl.routeCell[1]).Int64Slice()
	if err == nil && (len(res) != 2 || res[0] < 0 || res[0] > 2) {
		err = fmt.Errorf("script returned %v", res)
	}
	if err != nil {
		return &relay.Error{Kind: relay.KindUnavailable, Msg: "rate limiter unavailable, retry later",
			Err: fmt.Errorf("rate limit: redis: %w: %w", relay.ErrStoreDown, err), RetryAfter: unavailableRetry}
	}
	if res[0] == 0 {
		return nil
	}
	return rl.c.Refuse(time.Duration(res[1])*time.Microsecond, res[0] == 1, client)
}

// Tracked returns the number of senders whose state Redis keeps for the route.
func (rl *RateLimiter) Tracked(ctx context.Context) (int64, error) {
	return rl.client.ZCard(ctx, rl.ipKey).Result()
}
