package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"net"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hookrelay/hookrelay/filters"
	"github.com/hookrelay/hookrelay/relay"
	"github.com/hookrelay/hookrelay/relay/redisstore"
	"github.com/hookrelay/hookrelay/relay/redistest"
)

// The shared limiter's semantics are filters.RateLimiter's: filters' tests run their cases against
// both. These tests cover what is its own: Redis, its keys, and replicas sharing it.

type rlClock struct {
	mu sync.Mutex
	t  time.Time
}

func newRLClock() *rlClock { return &rlClock{t: time.Unix(1_700_000_000, 0)} }

func (c *rlClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *rlClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

var rlReq = httptest.NewRequest("POST", "/hook", nil)

// rlAddr is a distinct sender for each i: an address in its own /64 (2001:db8:<i>::1).
func rlAddr(i int) netip.Addr {
	return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i), 15: 1})
}

// redisClient returns a client of srv with short timeouts and no retries, so that a dead server
// fails a request in well under a second.
func redisClient(tb testing.TB, addr string) *redis.Client {
	tb.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, DialTimeout: 500 * time.Millisecond,
		ReadTimeout: 500 * time.Millisecond, WriteTimeout: 500 * time.Millisecond, MaxRetries: -1})
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

func mustRedisLimiter(tb testing.TB, client redis.UniversalClient, route string, c filters.RateConfig) *redisstore.RateLimiter {
	tb.Helper()
	rl, err := redisstore.NewRateLimiter(client, "", route, c)
	if err != nil {
		tb.Fatalf("NewRateLimiter(%q, %+v): %v", route, c, err)
	}
	return rl
}

// Retry-After is exactly what remains of the GCRA interval, refill is one request per interval up
// to the burst, and the pattern holds when it is sent later.
func TestRedisRateLimiterRetryAfterAndRefill(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	clock := newRLClock()
	rl := mustRedisLimiter(t, redisClient(t, srv.Addr), "r", filters.RateConfig{PerIP: 0.25, PerIPBurst: 2, Now: clock.Now})
	a := netip.MustParseAddr("192.0.2.7")
	retry := func() time.Duration {
		t.Helper()
		var e *relay.Error
		if err := rl.Admit(rlReq, a); !errors.As(err, &e) || e.Kind != relay.KindRateLimited {
			t.Fatalf("got %v, want rate limited", err)
		}
		return e.RetryAfter
	}
	for range 2 {
		if err := rl.Admit(rlReq, a); err != nil {
			t.Fatalf("within the burst: %v", err)
		}
	}
	// Interval 4 s, burst 2: the next request passes 4 s after the burst.
	for _, s := range []struct{ advance, want time.Duration }{
		{0, 4 * time.Second},
		{time.Second, 3 * time.Second},
		{1500 * time.Millisecond, 1500 * time.Millisecond},
		{1499 * time.Millisecond, time.Second}, // 1 ms left, sent as the 1 s floor
	} {
		clock.Advance(s.advance)
		if got := retry(); got != s.want {
			t.Fatalf("Retry-After %v, want %v", got, s.want)
		}
	}
	clock.Advance(time.Millisecond)
	if err := rl.Admit(rlReq, a); err != nil {
		t.Fatalf("at the Retry-After: %v", err)
	}
	if got := retry(); got != 4*time.Second {
		t.Fatalf("Retry-After %v after one refill, want 4s", got)
	}
	// A long idle period refills to the burst, no further.
	clock.Advance(time.Hour)
	for range 2 {
		if err := rl.Admit(rlReq, a); err != nil {
			t.Fatalf("after refilling: %v", err)
		}
	}
	if got := retry(); got != 4*time.Second {
		t.Fatalf("Retry-After %v past the refilled burst, want 4s", got)
	}
}

// Two replicas, each with its own client and limiter, share one allowance.
func TestRedisRateLimiterSharedByReplicas(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	clock := newRLClock()
	cfg := filters.RateConfig{PerIP: 1, PerIPBurst: 5, Now: clock.Now}
	replicas := []*redisstore.RateLimiter{
		mustRedisLimiter(t, redisClient(t, srv.Addr), "shared", cfg),
		mustRedisLimiter(t, redisClient(t, srv.Addr), "shared", cfg),
	}
	a := netip.MustParseAddr("203.0.113.9")
	admitted := make([]int, len(replicas))
	for i := range 10 {
		err := replicas[i%2].Admit(rlReq, a)
		switch {
		case err == nil:
			admitted[i%2]++
		case relay.KindOf(err) != relay.KindRateLimited:
			t.Fatalf("request %d: %v", i, err)
		}
	}
	if total := admitted[0] + admitted[1]; total != 5 {
		t.Fatalf("admitted %v by the replicas, %d in all, want 5", admitted, total)
	}

	// The route's limit too, from different addresses.
	cfg = filters.RateConfig{Route: 1, RouteBurst: 3, Now: clock.Now}
	r1, r2 := mustRedisLimiter(t, redisClient(t, srv.Addr), "shared-route", cfg), mustRedisLimiter(t, redisClient(t, srv.Addr), "shared-route", cfg)
	n := 0
	for i := range 10 {
		if []*redisstore.RateLimiter{r1, r2}[i%2].Admit(rlReq, rlAddr(i)) == nil {
			n++
		}
	}
	if n != 3 {
		t.Fatalf("route burst 3 admitted %d across two replicas", n)
	}
}

// Keys are where the doc says, in one hash slot per route, and expire once every bucket in them is
// full. Senders are IPv4 addresses and IPv6 /64s.
func TestRedisRateLimiterKeys(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	client := redisClient(t, srv.Addr)
	ctx := context.Background()
	clock := newRLClock()
	rl, err := redisstore.NewRateLimiter(client, "hr-test", "github:main", filters.RateConfig{PerIP: 1, PerIPBurst: 5,
		Route: 10, RouteBurst: 20, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	addrs := []string{"192.0.2.1", "::ffff:192.0.2.2", "2001:db8::7", "fe80::1%eth0"}
	began := time.Now() // an expiry runs down by at most the time since
	for _, s := range addrs {
		for range 3 {
			if err := rl.Admit(rlReq, netip.MustParseAddr(s)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := rl.Admit(rlReq, netip.Addr{}); err != nil {
		t.Fatal(err)
	}
	keys, err := client.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(keys)
	const tag = "{hr-test:rl:github:main}"
	if want := []string{tag + ":all", tag + ":ip"}; !slices.Equal(keys, want) {
		t.Fatalf("keys %q, want %q", keys, want)
	}
	// One slot for every key of the route: a Cluster runs the script on one node.
	if keySlot(keys[0]) != keySlot(keys[1]) {
		t.Errorf("keys %q in two slots", keys)
	}

	// TATs are in µs from the injected clock; expiries are the time to refill, bounded.
	now := clock.Now().UnixMicro()
	senders, err := client.ZRangeWithScores(ctx, tag+":ip", 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, z := range senders {
		got[z.Member.(string)] = int64(z.Score) - now
	}
	want := map[string]int64{
		"192.0.2.1": 3_000_000, "192.0.2.2": 3_000_000, // 3 requests at 1/s; mapped is IPv4
		"2001:db8::/64": 3_000_000, "fe80::/64": 3_000_000, // the zone is not part of the address
		"::": 1_000_000, // no address: 1 request
	}
	if !maps.Equal(got, want) {
		t.Errorf("senders (µs ahead of now) %v, want %v", got, want)
	}
	if v, err := client.Get(ctx, tag+":all").Int64(); err != nil || v != now+13*100_000 {
		t.Errorf("route TAT %d, %v; want now+1.3 s (13 requests at 10/s)", v, err)
	}
	for key, ceil := range map[string]time.Duration{tag + ":ip": 3 * time.Second, tag + ":all": 1300 * time.Millisecond} {
		pttl, err := client.PTTL(ctx, key).Result()
		ran := time.Since(began) + 10*time.Millisecond // and Redis' millisecond rounding
		if err != nil || pttl <= 0 || pttl > ceil || pttl < ceil-ran {
			t.Errorf("%s: PTTL %v, %v; want at most %v and less below it than the %v since the writes", key, pttl, err, ceil, ran)
		}
	}

	// Keys go once their bucket is full: 100/s with burst 1 refills in 10 ms.
	fast := mustRedisLimiter(t, client, "fast", filters.RateConfig{PerIP: 100, PerIPBurst: 1})
	if err := fast.Admit(rlReq, netip.MustParseAddr("192.0.2.1")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for client.Exists(ctx, "{hookrelay:rl:fast}:ip").Val() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("a refilled bucket's key still exists after 5 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// keySlot is Redis Cluster's HASH_SLOT of key: the store's slot function on its hash tag. A
// standalone server refuses CLUSTER KEYSLOT.
func keySlot(key string) int {
	if s := strings.IndexByte(key, '{'); s >= 0 {
		if e := strings.IndexByte(key[s+1:], '}'); e > 0 {
			key = key[s+1 : s+1+e]
		}
	}
	return redisstore.SlotOf(key)
}

func TestKeySlot(t *testing.T) {
	// The CRC16 test vector of the Cluster specification (0x31C3), and slots from its examples.
	if got := redisstore.SlotOf("123456789"); got != 0x31C3 {
		t.Fatalf("slot of 123456789 = %#x, want 0x31c3", got)
	}
	if keySlot("{user1000}.following") != keySlot("{user1000}.followers") || keySlot("foo{}{bar}") != redisstore.SlotOf("foo{}{bar}") ||
		keySlot("foo{{bar}}zap") != redisstore.SlotOf("{bar") || keySlot("foo") != 12182 {
		t.Fatal("keySlot does not follow the specification")
	}
}

// The Redis-shared limiter keeps at most MaxTracked senders, dropping the fullest buckets first,
// so that a flood of addresses cannot fill the Redis that holds the queue.
func TestRedisRateLimiterBoundsTrackedSenders(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	client := redisClient(t, srv.Addr)
	clock := newRLClock()
	rl := mustRedisLimiter(t, client, "flood", filters.RateConfig{PerIP: 1, PerIPBurst: 2, MaxTracked: 50, Now: clock.Now})
	busy := netip.MustParseAddr("192.0.2.1")
	for range 2 { // spends its whole burst: its bucket is the emptiest
		if err := rl.Admit(rlReq, busy); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 1000 {
		if err := rl.Admit(rlReq, netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)})); err != nil {
			t.Fatalf("sender %d: %v", i, err)
		}
	}
	n, err := rl.Tracked(context.Background())
	if err != nil || n != 50 {
		t.Fatalf("tracked %d, %v; want the cap, 50", n, err)
	}
	if err := rl.Admit(rlReq, busy); relay.KindOf(err) != relay.KindRateLimited {
		t.Errorf("the sender with an empty bucket was forgotten: %v", err)
	}
}

// A dead Redis makes Admit fail fast with 503, neither admitting nor refusing with 429; a restarted
// one is used again.
func TestRedisRateLimiterUnavailable(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	clock := newRLClock()
	rl := mustRedisLimiter(t, redisClient(t, srv.Addr), "r", filters.RateConfig{PerIP: 1, Route: 100, Now: clock.Now})
	a := netip.MustParseAddr("192.0.2.1")
	if err := rl.Admit(rlReq, a); err != nil {
		t.Fatal(err)
	}
	srv.Kill()
	for i := range 3 { // the pooled connection, then new dials
		start := time.Now()
		err := rl.Admit(rlReq, a)
		took := time.Since(start)
		var e *relay.Error
		if !errors.As(err, &e) || e.Kind != relay.KindUnavailable || e.RetryAfter != 5*time.Second ||
			e.Msg != "rate limiter unavailable, retry later" || e.Err == nil {
			t.Fatalf("request %d with Redis down: %#v, want KindUnavailable, Retry-After 5s, with the cause", i, err)
		}
		if took > 30*time.Second { // a hang, not a speed: go-redis' dial retries vary with the load
			t.Fatalf("request %d with Redis down took %v", i, took)
		}
		t.Logf("Redis down: %v in %v", err, took)
	}
	srv.Restart()
	clock.Advance(time.Second)
	deadline := time.Now().Add(5 * time.Second)
	for err := rl.Admit(rlReq, a); err != nil; err = rl.Admit(rlReq, a) {
		if time.Now().After(deadline) {
			t.Fatalf("after a restart: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A request whose context is done is not waited for.
func TestRedisRateLimiterContext(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rl := mustRedisLimiter(t, redisClient(t, srv.Addr), "r", filters.RateConfig{Route: 1})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := rl.Admit(rlReq.WithContext(ctx), netip.Addr{}); relay.KindOf(err) != relay.KindUnavailable || !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled request: %v", err)
	}
	if err := rl.Admit(nil, netip.Addr{}); err != nil {
		t.Fatalf("nil request: %v", err)
	}
}

// Without a rate there is nothing to ask Redis: a dead one does not matter.
func TestRedisRateLimiterNoLimitsNoRedis(t *testing.T) {
	// A "Redis" that closes every connection at once: any command sent would fail. The port stays
	// held, so nothing else can answer there.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	addr := ln.Addr().String()
	rl := mustRedisLimiter(t, redisClient(t, addr), "r", filters.RateConfig{})
	if err := rl.Admit(rlReq, netip.MustParseAddr("192.0.2.1")); err != nil {
		t.Fatal(err)
	}
	if _, err := redisstore.NewRateLimiter(nil, "", "r", filters.RateConfig{}); err != nil {
		t.Fatalf("no client and no rate: %v", err)
	}
}

// Concurrent requests spend exactly the allowance there is, across connections.
func TestRedisRateLimiterConcurrent(t *testing.T) {
	const addrs, perAddrBurst, routeBurst, goroutines, each = 20, 5, 50, 16, 50
	srv := redistest.Start(t, redistest.Options{})
	for _, route := range []bool{false, true} {
		t.Run(fmt.Sprintf("route=%v", route), func(t *testing.T) {
			clock := newRLClock()
			name := fmt.Sprint("route-", route)
			cfg := filters.RateConfig{PerIP: 1, PerIPBurst: perAddrBurst, Now: clock.Now}
			want := addrs * perAddrBurst
			if route {
				cfg.Route, cfg.RouteBurst = 1, routeBurst
				want = routeBurst
			}
			// Two replicas, each with its own pool.
			rls := []*redisstore.RateLimiter{
				mustRedisLimiter(t, redisClient(t, srv.Addr), name, cfg),
				mustRedisLimiter(t, redisClient(t, srv.Addr), name, cfg),
			}
			var admitted [addrs]atomic.Int64
			var wg sync.WaitGroup
			for g := range goroutines {
				wg.Go(func() {
					for i := range each {
						k := (g + i) % addrs
						err := rls[g%2].Admit(rlReq, rlAddr(k))
						switch {
						case err == nil:
							admitted[k].Add(1)
						case relay.KindOf(err) != relay.KindRateLimited:
							t.Error(err)
						}
					}
				})
			}
			wg.Wait()
			total := 0
			for k := range admitted {
				n := int(admitted[k].Load())
				if n > perAddrBurst {
					t.Errorf("address %d: %d admitted, burst %d", k, n, perAddrBurst)
				}
				total += n
			}
			if total != want {
				t.Errorf("%d admitted in all, want %d", total, want)
			}
		})
	}
}

// Random traffic gets the same answers from the shared limiter as from the in-process one.
func TestRedisRateLimiterMatchesRateLimiter(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	client := redisClient(t, srv.Addr)
	addrs := []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("2001:db8::1")}
	for i, cfg := range []filters.RateConfig{
		{PerIP: 0.5, PerIPBurst: 3},
		{Route: 2, RouteBurst: 4},
		{PerIP: 0.25, PerIPBurst: 2, Route: 1, RouteBurst: 3},
		{PerIP: 0.125, Route: 0.5, RouteBurst: 2},
	} {
		t.Run(fmt.Sprintf("perIP=%v/%d,route=%v/%d", cfg.PerIP, cfg.PerIPBurst, cfg.Route, cfg.RouteBurst), func(t *testing.T) {
			clock := newRLClock()
			cfg.Now = clock.Now
			local, err := filters.NewRateLimiter(cfg)
			if err != nil {
				t.Fatal(err)
			}
			shared := mustRedisLimiter(t, client, fmt.Sprint("match", i), cfg)
			rnd := rand.New(rand.NewPCG(uint64(i), 1))
			refused := 0
			for step := range 2000 {
				if rnd.IntN(3) == 0 {
					clock.Advance(time.Duration(rnd.IntN(3000)) * time.Millisecond)
				}
				a := addrs[rnd.IntN(len(addrs))]
				want, got := local.Admit(rlReq, a), shared.Admit(rlReq, a)
				var we, ge *relay.Error
				switch {
				case want == nil && got == nil:
				case errors.As(want, &we) && errors.As(got, &ge):
					refused++
					if we.Error() != ge.Error() || (we.RetryAfter-ge.RetryAfter).Abs() > time.Microsecond {
						t.Fatalf("step %d from %v: in-process %v (Retry-After %v), shared %v (%v)", step, a, want, we.RetryAfter, got, ge.RetryAfter)
					}
				default:
					t.Fatalf("step %d from %v: in-process %v, shared %v", step, a, want, got)
				}
			}
			t.Logf("%d of 2000 refused, alike", refused)
			if refused == 0 || refused == 2000 {
				t.Fatalf("%d of 2000 refused: the traffic tests nothing", refused)
			}
		})
	}
}

func TestNewRedisRateLimiterErrors(t *testing.T) {
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // never dialled
	defer client.Close()
	tests := []struct {
		prefix, route string
		cfg           filters.RateConfig
		client        redis.UniversalClient
		want          string
	}{
		{"", "r", filters.RateConfig{PerIP: -1}, client, "per-address rate"},
		{"", "r", filters.RateConfig{Route: math.NaN()}, client, "route rate"},
		{"", "r", filters.RateConfig{Route: math.Inf(1)}, client, "route rate"},
		{"", "r", filters.RateConfig{PerIP: 1, PerIPBurst: -1}, client, "per-address burst"},
		{"", "r", filters.RateConfig{Route: 1, RouteBurst: -2}, client, "route burst"},
		{"", "r", filters.RateConfig{PerIPBurst: 5}, client, "per-address burst 5 given without a rate"},
		{"", "r", filters.RateConfig{RouteBurst: 5}, client, "route burst 5 given without a rate"},
		{"", "r", filters.RateConfig{Route: 2e6}, client, "route rate 2e+06 is above"},
		{"", "", filters.RateConfig{PerIP: 1}, client, "route's name"},
		{"", "a}b", filters.RateConfig{PerIP: 1}, client, "route name"},
		{"{x", "r", filters.RateConfig{PerIP: 1}, client, "prefix"},
		{"", "r", filters.RateConfig{PerIP: 1, IPv6Prefix: 8}, client, "IPv6 prefix /8"},
		{"", "r", filters.RateConfig{PerIP: 1, MaxTracked: -1}, client, "tracked must not be negative"},
		{"", "r", filters.RateConfig{PerIP: 1}, nil, "no Redis client"},
	}
	for _, tt := range tests {
		_, err := redisstore.NewRateLimiter(tt.client, tt.prefix, tt.route, tt.cfg)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("NewRateLimiter(%q, %q, %+v) = %v, want an error containing %q", tt.prefix, tt.route, tt.cfg, err, tt.want)
		}
	}
}

// Extreme but valid rates keep every time exact and every expiry valid.
func TestRedisRateLimiterExtremeRates(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	client := redisClient(t, srv.Addr)
	clock := newRLClock()
	a := netip.MustParseAddr("192.0.2.1")
	for i, c := range []struct {
		rate  float64
		burst int
		wantN int // admitted at once
	}{
		{1e6, 0, 1e3},    // the highest rate: its burst is a second's worth, more than we send
		{1e-12, 1, 1},    // once per 31,000 years, raised to once per 100
		{1e-9, 1e9, 1e3}, // a burst beyond 100 years of intervals
		{1, math.MaxInt64, 1e3},
	} {
		rl := mustRedisLimiter(t, client, fmt.Sprint("extreme", i), filters.RateConfig{PerIP: c.rate, PerIPBurst: c.burst, Now: clock.Now})
		n := 0
		for range 1000 {
			err := rl.Admit(rlReq, a)
			if err == nil {
				n++
			} else if relay.KindOf(err) != relay.KindRateLimited {
				t.Fatalf("rate %v burst %d: %v", c.rate, c.burst, err)
			}
		}
		if n != c.wantN {
			t.Errorf("rate %v burst %d: %d admitted at once, want %d", c.rate, c.burst, n, c.wantN)
		}
	}
}

func BenchmarkRedisRateLimiter(b *testing.B) {
	srv := redistest.Start(b, redistest.Options{})
	client := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer client.Close()
	const addrs = 1 << 14
	pool := make([]netip.Addr, addrs)
	for i := range pool {
		pool[i] = rlAddr(i * 7919)
	}
	// Many requests in flight, as in a busy replica: the measure is then throughput, not one round
	// trip's latency.
	const parallelism = 16
	b.Run("PING", func(b *testing.B) { // the round trip alone, for reference
		b.SetParallelism(parallelism)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := client.Ping(context.Background()).Err(); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	// Rates high enough that every request is admitted: the hot path, with the real clock; and a
	// route that refuses everything.
	for _, bc := range []struct {
		name string
		cfg  filters.RateConfig
	}{
		{"per-address", filters.RateConfig{PerIP: 1e6, PerIPBurst: 1e9}},
		{"route", filters.RateConfig{Route: 1e6, RouteBurst: 1e9}},
		{"both", filters.RateConfig{PerIP: 1e6, PerIPBurst: 1e9, Route: 1e6, RouteBurst: 1e9}},
		{"refused", filters.RateConfig{Route: 1e-6, RouteBurst: 1}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			rl := mustRedisLimiter(b, client, "bench-"+bc.name, bc.cfg)
			var seq atomic.Uint64
			var failed atomic.Int64
			b.ReportAllocs()
			b.SetParallelism(parallelism)
			b.RunParallel(func(pb *testing.PB) {
				i := seq.Add(1) * 4099
				for pb.Next() {
					i++
					if err := rl.Admit(rlReq, pool[i%addrs]); err != nil && bc.name != "refused" {
						failed.Add(1)
					}
				}
			})
			if n := failed.Load(); n > 0 {
				b.Fatalf("%d requests not admitted", n)
			}
		})
	}
}
