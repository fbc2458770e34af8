package filters

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"

	"github.com/hookrelay/hookrelay/relay"
)

// RedisRateConfig configures a RedisRateLimiter. Rates and bursts mean what they mean in
// RateConfig.
type RedisRateConfig struct {
	PerIP      float64 // requests per second per source address; 0 = none
	PerIPBurst int     // 0 = max(1, ceil(PerIP))
	Route      float64 // requests per second for the whole route, across replicas; 0 = none
	RouteBurst int     // 0 = max(1, ceil(Route))
	Prefix     string  // key prefix; "" = "hookrelay"
	// RouteName names the route in the keys: replicas share a limit when they share it, and two
	// routes must not.
	RouteName string
	Now       func() time.Time // nil = time.Now; tests inject a clock
}

// MaxRedisRate is the highest rate a RedisRateLimiter takes: it counts in whole microseconds, one
// request every microsecond at most. One Redis runs far fewer scripts than that in a second.
const MaxRedisRate = 1e6

// maxRedisSpan bounds a bucket's refill time, in microseconds: about 100 years. A rate so tiny that
// its bucket would take longer is raised to refill in that time, keeping every time in the script
// an integer below 2^53, which a Lua double holds exactly.
const maxRedisSpan = 100 * 365.25 * 24 * 3600 * 1e6

// RedisUnavailableRetry is the Retry-After sent when Redis cannot be reached.
const RedisUnavailableRetry = 5 * time.Second

// RedisRateLimiter is RateLimiter shared through Redis by the replicas of a relay, so that a
// route's rate, and an address's, hold in all of them together rather than in each. It has the
// same semantics: relay.RateLimited with the time until the request would pass; a refused request
// spends nothing, neither its address's allowance nor the route's; the per-address rate is checked
// first.
//
// Each limit is a GCRA cell (generic cell rate algorithm: a token bucket kept as one number, the
// theoretical arrival time of the next request), checked and updated by one Lua script, so
// concurrent requests from any replica take exactly the allowance there is. Its keys are
//
//	{<prefix>:rl:<route>}:ip:<address>   per source address
//	{<prefix>:rl:<route>}:all            the route
//
// hash-tagged on the route so that they are in one Redis Cluster slot, as one script needs. A key
// expires when its bucket would be full again, which loses nothing: idle addresses take no memory.
// As in RateLimiter, an IPv4-mapped address is its IPv4 address, and requests without an address
// share one bucket ("::").
//
// Times come from the replica's clock (Now) in whole microseconds: replicas' clocks must agree,
// and a replica whose clock is ahead by d spends allowance up to d early. A rate's interval is
// rounded to a whole microsecond: exact when 10^6/rate is whole, within 0.5% up to 10^4 per second.
//
// When Redis cannot be reached, or fails the script, Admit returns relay.KindUnavailable (503,
// Retry-After 5 s), not a refusal and not an admission. A 429 would blame the sender for our
// outage; admitting unlimited would let a Redis outage lift every limit, and the relay's store,
// on the same Redis, could not store the webhook anyway. A sender retries 503 as it does 429. How
// long Admit waits is the client's (DialTimeout, ReadTimeout, MaxRetries) and the request's
// context.
type RedisRateLimiter struct {
	client     redis.UniversalClient
	now        func() time.Time
	ipPrefix   string // key of an address, before the address
	routeKey   string
	perIP      rate.Limit
	perIPBurst int
	ipCell     [2]int64 // emission interval, burst × interval; µs. Zero: no per-address rate
	route      rate.Limit
	routeBurst int
	routeCell  [2]int64 // zero: no route rate
}

var _ relay.Guard = (*RedisRateLimiter)(nil)

// NewRedisRateLimiter validates c as NewRateLimiter does, and returns its limiter on client. Rates
// above MaxRedisRate are refused too; the prefix and route name must not hold braces, which would
// move the hash tag. With neither rate set, every request is admitted without asking Redis.
func NewRedisRateLimiter(client redis.UniversalClient, c RedisRateConfig) (*RedisRateLimiter, error) {
	perIPBurst, err := burstFor("per-address", c.PerIP, c.PerIPBurst)
	if err != nil {
		return nil, err
	}
	routeBurst, err := burstFor("route", c.Route, c.RouteBurst)
	if err != nil {
		return nil, err
	}
	for _, r := range []struct {
		what string
		v    float64
	}{{"per-address", c.PerIP}, {"route", c.Route}} {
		if r.v > MaxRedisRate {
			return nil, fmt.Errorf("rate limit: %s rate %v is above %v, the most a Redis-shared limiter counts", r.what, r.v, float64(MaxRedisRate))
		}
	}
	prefix := c.Prefix
	if prefix == "" {
		prefix = "hookrelay"
	}
	switch {
	case c.RouteName == "":
		return nil, errors.New("rate limit: a Redis-shared limiter needs the route's name")
	case strings.ContainsAny(prefix, "{}"):
		return nil, fmt.Errorf("rate limit: key prefix %q must not contain braces", prefix)
	case strings.ContainsAny(c.RouteName, "{}"):
		return nil, fmt.Errorf("rate limit: route name %q must not contain braces", c.RouteName)
	case client == nil && (c.PerIP > 0 || c.Route > 0):
		return nil, errors.New("rate limit: no Redis client")
	}
	tag := "{" + prefix + ":rl:" + c.RouteName + "}"
	rl := &RedisRateLimiter{client: client, now: c.Now, ipPrefix: tag + ":ip:", routeKey: tag + ":all"}
	if rl.now == nil {
		rl.now = time.Now
	}
	if c.PerIP > 0 {
		rl.perIP, rl.perIPBurst = rate.Limit(c.PerIP), perIPBurst
		rl.ipCell = gcraCell(c.PerIP, perIPBurst)
	}
	if c.Route > 0 {
		rl.route, rl.routeBurst = rate.Limit(c.Route), routeBurst
		rl.routeCell = gcraCell(c.Route, routeBurst)
	}
	return rl, nil
}

// gcraCell returns a cell's emission interval and its span, burst intervals: the time a bucket
// takes to refill from empty. r is in (0, MaxRedisRate].
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

// gcraScript checks every cell in KEYS, and only when all admit moves each one's theoretical
// arrival time (TAT) on by its interval. A refusal writes nothing: a sender retrying too early does
// not push its next slot further away, and a per-address refusal leaves the route alone.
//
// ARGV[1] is now; ARGV[2i], ARGV[2i+1] are KEYS[i]'s interval and span; all in µs. It returns
// {0, 0} when admitted, else {i, µs until KEYS[i] would admit}. A cell admits when its TAT, once
// the request is added, is at most a span ahead of now. Every number is an integer below 2^53,
// exact in a Lua double.
var gcraScript = redis.NewScript(`
local now = tonumber(ARGV[1])
local tats = {}
for i = 1, #KEYS do
  local interval, span = tonumber(ARGV[2*i]), tonumber(ARGV[2*i+1])
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  tat = tat + interval
  if tat - now > span then
    return {i, tat - span - now}
  end
  tats[i] = tat
end
for i = 1, #KEYS do
  -- The key lives until the bucket is full again; then its absence means the same.
  local ttl = math.ceil((tats[i] - now) / 1000)
  redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', ttl)
end
return {0, 0}
`)

// Admit spends one request of client's allowance and of the route's, or refuses the request with
// relay.RateLimited and spends neither. It fails with relay.KindUnavailable when Redis does.
func (rl *RedisRateLimiter) Admit(r *http.Request, client netip.Addr) error {
	var keys [2]string
	var args [5]any
	n := 0
	add := func(key string, cell [2]int64) {
		keys[n] = key
		args[1+2*n], args[2+2*n] = cell[0], cell[1]
		n++
	}
	if rl.ipCell[0] != 0 {
		// As16 then Unmap: IPv4 and its mapped form alike, no zone; the zero Addr is "::".
		add(rl.ipPrefix+netip.AddrFrom16(client.As16()).Unmap().String(), rl.ipCell)
	}
	if rl.routeCell[0] != 0 {
		add(rl.routeKey, rl.routeCell)
	}
	if n == 0 {
		return nil
	}
	args[0] = rl.now().UnixMicro()
	ctx := context.Background()
	if r != nil {
		ctx = r.Context()
	}
	res, err := gcraScript.Run(ctx, rl.client, keys[:n], args[:1+2*n]...).Int64Slice()
	if err == nil && (len(res) != 2 || res[0] < 0 || res[0] > int64(n)) {
		err = fmt.Errorf("script returned %v", res)
	}
	if err != nil {
		return &relay.Error{Kind: relay.KindUnavailable, Msg: "rate limiter unavailable, retry later",
			Err: fmt.Errorf("rate limit: redis: %w", err), RetryAfter: RedisUnavailableRetry}
	}
	if res[0] == 0 {
		return nil
	}
	wait := time.Duration(res[1]) * time.Microsecond
	if keys[res[0]-1] == rl.routeKey {
		return relay.RateLimited(wait, &overRateError{rate: rl.route, burst: rl.routeBurst})
	}
	return relay.RateLimited(wait, &overRateError{true, client, rl.perIP, rl.perIPBurst})
}
