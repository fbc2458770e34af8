package filters

import (
	"fmt"
	"hash/maphash"
	"math"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/hookrelay/hookrelay/relay"
	"golang.org/x/time/rate"
)

// DefaultMaxTracked is RateConfig.MaxTracked when it is 0.
const DefaultMaxTracked = 100000

// RateConfig configures a RateLimiter. Rates are token buckets: Burst requests at once, then one
// every 1/rate seconds.
type RateConfig struct {
	PerIP      float64 // requests per second per source address; 0 = none
	PerIPBurst int     // 0 = max(1, ceil(PerIP)): one second's worth
	Route      float64 // requests per second for the whole route; 0 = none
	RouteBurst int     // 0 = max(1, ceil(Route))
	// MaxTracked caps the source addresses whose per-address state is kept, and so the memory a
	// flood of distinct addresses can take (docs/BENCHMARKS.md). 0 = DefaultMaxTracked.
	MaxTracked int
	// IPv6Prefix groups IPv6 senders: one bucket per /IPv6Prefix, since one host usually holds a
	// whole /64 and could otherwise use a fresh address per request. 0 = 64; 128
	// gives each address its own bucket.
	IPv6Prefix int
	Now        func() time.Time // nil = time.Now; tests inject a clock
}

// defaultIPv6Prefix is the IPv6 prefix length senders are grouped by: the /64 of one subnet, often
// of one host.
const defaultIPv6Prefix = 64

// Resolve validates c and fills in its defaults: the one authority for both limiters, this one
// and the Redis-shared one (redisstore.RateLimiter). Rates and bursts must not be negative, or NaN
// or infinite; a burst needs its rate.
func (c RateConfig) Resolve() (RateConfig, error) {
	var err error
	if c.PerIPBurst, err = burstFor("per-address", c.PerIP, c.PerIPBurst); err != nil {
		return c, err
	}
	if c.RouteBurst, err = burstFor("route", c.Route, c.RouteBurst); err != nil {
		return c, err
	}
	switch {
	case c.MaxTracked < 0:
		return c, fmt.Errorf("rate limit: senders tracked must not be negative, got %d", c.MaxTracked)
	case c.MaxTracked == 0:
		c.MaxTracked = DefaultMaxTracked
	}
	switch {
	case c.IPv6Prefix == 0:
		c.IPv6Prefix = defaultIPv6Prefix
	case c.IPv6Prefix < 16 || c.IPv6Prefix > 128:
		return c, fmt.Errorf("rate limit: IPv6 prefix /%d is outside /16../128", c.IPv6Prefix)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c, nil
}

// Sender is the sender a per-address bucket belongs to: an IPv4 address (IPv4-mapped ones
// unmapped), or the IPv6 prefix of c.IPv6Prefix bits holding the address, zone dropped. The zero
// Addr stays zero. c is resolved.
func (c RateConfig) Sender(a netip.Addr) netip.Addr {
	a = a.Unmap().WithZone("")
	if a.Is6() && c.IPv6Prefix < 128 {
		p, _ := a.Prefix(c.IPv6Prefix) // 16..127: never an error
		return p.Addr()
	}
	return a
}

// Refuse is the refusal of a request from client over c's per-address rate (perAddr) or its
// route's rate, to be tried again in wait. c is resolved.
func (c RateConfig) Refuse(wait time.Duration, perAddr bool, client netip.Addr) error {
	if perAddr {
		return relay.RateLimited(wait, &overRateError{true, client, c.PerIP, c.PerIPBurst})
	}
	return relay.RateLimited(wait, &overRateError{rate: c.Route, burst: c.RouteBurst})
}

// RateLimiter refuses a sender over its per-address rate or over the route's rate, with
// relay.RateLimited and the time until a token is available. A refused request consumes no token,
// neither its address's nor the route's, so a sender that keeps retrying too early does not push
// its own or everyone's next slot further away. The per-address rate is checked first.
//
// Per-address state is kept for at most MaxTracked addresses, in shards with a lock each. When a
// shard is full it first drops the addresses whose bucket has refilled completely, which loses
// nothing: a new bucket is the same. If most are still busy it drops arbitrary ones down to 7/8 of
// the shard's share, which briefly forgives those addresses a burst; the route rate still holds.
// Only a flood of more than about MaxTracked distinct addresses, all active within a refill time,
// gets there.
//
// IPv6 senders are grouped by prefix (IPv6Prefix, default /64): a single host often holds a whole
// /64, and would otherwise get a fresh bucket with every address. Requests without a source address
// share one bucket.
type RateLimiter struct {
	c      RateConfig    // resolved
	refill time.Duration // for a per-address bucket, from empty to full
	shards []shard       // nil: no per-address rate
	seed   maphash.Seed  // random per limiter: a sender cannot aim its addresses at one shard
	route  *rate.Limiter // nil: no route rate
}

var _ relay.Guard = (*RateLimiter)(nil)

// shard is one part of the per-address state. Its lock also serialises each address's check and
// take, so a token is taken only when the request is admitted.
type shard struct {
	mu  sync.Mutex
	m   map[[16]byte]bucket
	max int      // addresses kept at most
	_   [40]byte // a cache line each, so shards do not contend through false sharing
}

// bucket is one address's limiter, and a time by which it is surely full again if no request
// comes: kept beside the pointer so that eviction finds the idle ones without a cache miss per
// limiter. idleAt is a bound, rewritten once per eighth of a refill rather than on every request,
// so that a busy address's map slot does not bounce between cores (docs/BENCHMARKS.md).
type bucket struct {
	lim    *rate.Limiter
	idleAt int64 // Unix nanoseconds; at least the last take plus a whole refill
}

// maxShards bounds the shards: enough that concurrent requests rarely meet on one lock.
const maxShards = 32

// NewRateLimiter validates c (RateConfig.Resolve) and returns its limiter. With neither rate set,
// every request is admitted.
func NewRateLimiter(c RateConfig) (*RateLimiter, error) {
	c, err := c.Resolve()
	if err != nil {
		return nil, err
	}
	rl := &RateLimiter{c: c, seed: maphash.MakeSeed()}
	if c.PerIP > 0 {
		rl.refill = refillWait(float64(c.PerIPBurst), rate.Limit(c.PerIP))
		// Small caps get fewer shards, so each shard still holds enough to evict in batches.
		n := min(maxShards, max(1, c.MaxTracked/256))
		rl.shards = make([]shard, n)
		for i := range rl.shards {
			rl.shards[i].max = c.MaxTracked / n
			if i < c.MaxTracked%n {
				rl.shards[i].max++
			}
		}
	}
	if c.Route > 0 {
		rl.route = rate.NewLimiter(rate.Limit(c.Route), c.RouteBurst)
	}
	return rl, nil
}

func burstFor(what string, r float64, burst int) (int, error) {
	switch {
	case math.IsNaN(r) || math.IsInf(r, 0) || r < 0:
		return 0, fmt.Errorf("rate limit: %s rate must be a finite number at least 0, got %v", what, r)
	case burst < 0:
		return 0, fmt.Errorf("rate limit: %s burst must not be negative, got %d", what, burst)
	case r == 0 && burst > 0:
		return 0, fmt.Errorf("rate limit: %s burst %d given without a rate", what, burst)
	case r == 0:
		return 0, nil
	case burst == 0:
		return int(min(math.Ceil(r), math.MaxInt32)), nil
	}
	return burst, nil
}

// Admit takes a token from client's bucket and from the route's, or refuses the request with
// relay.RateLimited and takes neither.
func (rl *RateLimiter) Admit(_ *http.Request, client netip.Addr) error {
	if rl.shards == nil {
		if rl.route == nil {
			return nil
		}
		now := rl.c.Now()
		if !rl.route.AllowN(now, 1) {
			return rl.routeRefusal(now)
		}
		return nil
	}
	now := rl.c.Now()
	key := rl.c.Sender(client).As16() // the zero Addr gives all zeroes
	s := &rl.shards[maphash.Comparable(rl.seed, key)%uint64(len(rl.shards))]
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.m[key]
	if !ok {
		b = s.add(key, now, rl)
	}
	// Check, then take, under the shard's lock: nothing else touches the limiter meanwhile, so the
	// take succeeds, and it is made only once the route has admitted the request too.
	tokens := b.lim.TokensAt(now)
	if tokens < 1 {
		return rl.c.Refuse(refillWait(1-tokens, rate.Limit(rl.c.PerIP)), true, client)
	}
	if rl.route != nil && !rl.route.AllowN(now, 1) {
		return rl.routeRefusal(now)
	}
	b.lim.AllowN(now, 1)
	// A bucket refills from empty in rl.refill, so it is full by now+refill whatever it held.
	if t := now.UnixNano(); b.idleAt < addSat(t, rl.refill) {
		b.idleAt = rl.idleAt(t)
		s.m[key] = b
	}
	return nil
}

// idleAt is the idle bound for a take at t, an eighth of a refill beyond the need.
func (rl *RateLimiter) idleAt(t int64) int64 {
	return addSat(t, rl.refill+rl.refill/8)
}

// addSat is t+d, saturating instead of overflowing for the very long waits of tiny rates.
func addSat(t int64, d time.Duration) int64 {
	if t > math.MaxInt64-int64(d) { // d is not negative: no overflow here
		return math.MaxInt64
	}
	return t + int64(d)
}

// routeRefusal says when the route has a token again. The route limiter is shared, so another
// request may take that token first: the time is a hint, which is all Retry-After is.
func (rl *RateLimiter) routeRefusal(now time.Time) error {
	return rl.c.Refuse(refillWait(1-rl.route.TokensAt(now), rate.Limit(rl.c.Route)), false, netip.Addr{})
}

// overRateError formats only when logged, keeping a flood of refusals cheap.
type overRateError struct {
	perAddr bool // else the route's rate
	addr    netip.Addr
	rate    float64
	burst   int
}

func (e *overRateError) Error() string {
	if e.perAddr {
		return fmt.Sprintf("%s over the per-address rate of %v/s (burst %d)", e.addr, e.rate, e.burst)
	}
	return fmt.Sprintf("route over its rate of %v/s (burst %d)", e.rate, e.burst)
}

// refillWait is the time a bucket filling at r takes to gain missing tokens, rounded up to whole
// nanoseconds so that a caller waiting exactly that long finds the token there.
func refillWait(missing float64, r rate.Limit) time.Duration {
	if missing <= 0 {
		return 0
	}
	d := math.Ceil(missing / float64(r) * float64(time.Second))
	if d >= math.MaxInt64 {
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(d)
}

// add starts a full bucket for key, making room first when the shard is full. Its idle bound
// already covers the take that follows.
func (s *shard) add(key [16]byte, now time.Time, rl *RateLimiter) bucket {
	if s.m == nil {
		s.m = make(map[[16]byte]bucket)
	}
	if len(s.m) >= s.max {
		s.evict(now)
	}
	b := bucket{lim: rate.NewLimiter(rate.Limit(rl.c.PerIP), rl.c.PerIPBurst), idleAt: rl.idleAt(now.UnixNano())}
	s.m[key] = b
	return b
}

// evict drops every address whose bucket is surely full again, then arbitrary ones until the
// shard is at 7/8 of its share. Freeing a batch, not one slot, keeps a flood of new addresses from
// paying for a scan of the shard on every request. The survivors move to a new map: Go maps do not
// shrink, and one that only ever deletes and inserts grows with its tombstones.
func (s *shard) evict(now time.Time) {
	low := s.max - max(1, s.max/8)
	t := now.UnixNano()
	m := make(map[[16]byte]bucket, s.max)
	for k, b := range s.m { // Go's map order is randomised: arbitrary victims beyond low
		if len(m) == low {
			break
		}
		if b.idleAt > t {
			m[k] = b
		}
	}
	s.m = m
}

// Tracked returns the number of source addresses whose state is kept, for metrics.
func (rl *RateLimiter) Tracked() int {
	n := 0
	for i := range rl.shards {
		s := &rl.shards[i]
		s.mu.Lock()
		n += len(s.m)
		s.mu.Unlock()
	}
	return n
}
