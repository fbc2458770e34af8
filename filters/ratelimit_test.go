package filters_test

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
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

func mustRateLimiter(t testing.TB, c filters.RateConfig) *filters.RateLimiter {
	t.Helper()
	rl, err := filters.NewRateLimiter(c)
	if err != nil {
		t.Fatalf("NewRateLimiter(%+v): %v", c, err)
	}
	return rl
}

var rlReq = httptest.NewRequest("POST", "/hook", nil)

// rlAddr is a distinct sender for each i: an address in its own /64 (2001:db8:<i>::1), since the
// limiters group IPv6 addresses by /64.
func rlAddr(i int) netip.Addr {
	var b [16]byte
	b[0], b[1], b[2], b[3] = 0x20, 0x01, 0x0d, 0xb8
	for k := 0; k < 4; k++ {
		b[7-k] = byte(i >> (8 * k))
	}
	b[15] = 1
	return netip.AddrFrom16(b)
}

// rlStep is one request in a rate-limit script: advance the clock, then send from addr.
type rlStep struct {
	advance time.Duration
	addr    string
	retry   time.Duration // 0: admitted; else refused with this Retry-After
}

// runGuardSteps runs a rate-limit script against any limiter.
func runGuardSteps(t *testing.T, g relay.Guard, clock *rlClock, steps []rlStep) {
	t.Helper()
	for i, s := range steps {
		clock.Advance(s.advance)
		err := g.Admit(rlReq, netip.MustParseAddr(s.addr))
		if s.retry == 0 {
			if err != nil {
				t.Fatalf("step %d (%s): refused: %v", i, s.addr, err)
			}
			continue
		}
		var e *relay.Error
		if !errors.As(err, &e) || e.Kind != relay.KindRateLimited {
			t.Fatalf("step %d (%s): got %v, want rate limited", i, s.addr, err)
		}
		if e.RetryAfter != s.retry {
			t.Fatalf("step %d (%s): Retry-After %v, want %v", i, s.addr, e.RetryAfter, s.retry)
		}
	}
}

// rlCase is a rate-limit script. The in-process and the Redis limiter run the same cases: they
// must behave the same.
type rlCase struct {
	name  string
	cfg   filters.RateConfig
	steps []rlStep
}

func rateLimiterCases() []rlCase {
	const a, b, c = "198.51.100.1", "198.51.100.2", "2001:db8::1"
	return []rlCase{
		{"burst then refusal, refill", filters.RateConfig{PerIP: 0.1, PerIPBurst: 2}, []rlStep{
			{0, a, 0}, {0, a, 0},
			{0, a, 10 * time.Second}, // one token every 10 s
			{0, a, 10 * time.Second}, // the refusal took nothing
			{4 * time.Second, a, 6 * time.Second},
			{6 * time.Second, a, 0},
			{0, a, 10 * time.Second},
			{25 * time.Second, a, 0}, {0, a, 0}, // refilled to the burst, no further
			{0, a, 10 * time.Second},
		}},
		{"Retry-After is at least a second", filters.RateConfig{PerIP: 4, PerIPBurst: 1}, []rlStep{
			{0, a, 0}, {0, a, time.Second}, // 250 ms away, sent as 1 s
			{250 * time.Millisecond, a, 0},
		}},
		{"fractional refill", filters.RateConfig{PerIP: 1.0 / 3, PerIPBurst: 1}, []rlStep{
			{0, a, 0}, {0, a, 3 * time.Second},
			{1500 * time.Millisecond, a, 1500 * time.Millisecond},
			{1499 * time.Millisecond, a, time.Second}, // 1 ms away
			{time.Millisecond, a, 0},
		}},
		{"per-address isolation", filters.RateConfig{PerIP: 0.5, PerIPBurst: 1}, []rlStep{
			{0, a, 0}, {0, a, 2 * time.Second},
			{0, b, 0}, {0, b, 2 * time.Second},
			{0, c, 0}, {0, "::ffff:" + a, 2 * time.Second}, // a mapped address is the IPv4 one
			{2 * time.Second, a, 0},
		}},
		{"route limit across addresses", filters.RateConfig{Route: 0.5, RouteBurst: 2}, []rlStep{
			{0, a, 0}, {0, b, 0},
			{0, c, 2 * time.Second}, {0, a, 2 * time.Second},
			{time.Second, c, time.Second},
			{time.Second, c, 0},
		}},
		{"per-address refusal takes no route token", filters.RateConfig{PerIP: 0.01, PerIPBurst: 1, Route: 0.1, RouteBurst: 2}, []rlStep{
			{0, a, 0},
			{0, a, 100 * time.Second}, {0, a, 100 * time.Second}, {0, a, 100 * time.Second},
			{0, b, 0}, // the route's second token is still there
			{0, c, 10 * time.Second},
		}},
		{"route refusal takes no per-address token", filters.RateConfig{PerIP: 0.01, PerIPBurst: 1, Route: 1, RouteBurst: 1}, []rlStep{
			{0, a, 0},
			{0, b, time.Second}, {0, b, time.Second},
			{time.Second, b, 0}, // b's own token survived its refusals
			{time.Second, b, 99 * time.Second},
		}},
		{"default burst is a second's worth", filters.RateConfig{PerIP: 2.5}, []rlStep{
			{0, a, 0}, {0, a, 0}, {0, a, 0}, {0, a, time.Second},
		}},
		{"default burst at least 1", filters.RateConfig{Route: 0.2}, []rlStep{
			{0, a, 0}, {0, b, 5 * time.Second},
		}},
		{"no limits", filters.RateConfig{}, []rlStep{
			{0, a, 0}, {0, a, 0}, {0, a, 0}, {0, a, 0},
		}},
		{"no address shares one bucket", filters.RateConfig{PerIP: 1, PerIPBurst: 1}, []rlStep{
			{0, "::", 0}, {0, "::", time.Second},
		}},
	}
}

// bothLimiters builds the in-process limiter and the one shared through Redis
// (redisstore.RateLimiter) from one configuration: they have the same semantics, which the tests
// that take both show.
func bothLimiters(t *testing.T) map[string]func(*testing.T, filters.RateConfig) relay.Guard {
	srv := redistest.Start(t, redistest.Options{})
	client := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = client.Close() })
	n := 0
	return map[string]func(*testing.T, filters.RateConfig) relay.Guard{
		"in-process": func(t *testing.T, c filters.RateConfig) relay.Guard { return mustRateLimiter(t, c) },
		"redis": func(t *testing.T, c filters.RateConfig) relay.Guard {
			n++ // a route each
			rl, err := redisstore.NewRateLimiter(client, "", fmt.Sprint("route-", n), c)
			if err != nil {
				t.Fatal(err)
			}
			return rl
		},
	}
}

func TestRateLimiter(t *testing.T) {
	for name, mk := range bothLimiters(t) {
		for _, tt := range rateLimiterCases() {
			t.Run(name+"/"+tt.name, func(t *testing.T) {
				clock := newRLClock()
				tt.cfg.Now = clock.Now
				runGuardSteps(t, mk(t, tt.cfg), clock, tt.steps)
			})
		}
	}
}

func TestRateLimiterNoAddress(t *testing.T) {
	clock := newRLClock()
	rl := mustRateLimiter(t, filters.RateConfig{PerIP: 1, PerIPBurst: 1, Now: clock.Now})
	if err := rl.Admit(rlReq, netip.Addr{}); err != nil {
		t.Fatal(err)
	}
	if err := rl.Admit(rlReq, netip.Addr{}); relay.KindOf(err) != relay.KindRateLimited {
		t.Fatalf("second request without an address: %v", err)
	}
}

func TestRateLimiterHTTPRetryAfter(t *testing.T) {
	clock := newRLClock()
	rl := mustRateLimiter(t, filters.RateConfig{PerIP: 1.0 / 30, PerIPBurst: 1, Now: clock.Now})
	addr := netip.MustParseAddr("198.51.100.1")
	_ = rl.Admit(rlReq, addr)
	clock.Advance(2500 * time.Millisecond)
	err := rl.Admit(rlReq, addr)
	var e *relay.Error
	if !errors.As(err, &e) || e.RetryAfter != 27500*time.Millisecond {
		t.Fatalf("got %v, want a retry after 27.5 s", err)
	}
	clock.Advance(e.RetryAfter)
	if err := rl.Admit(rlReq, addr); err != nil {
		t.Fatalf("refused after waiting the Retry-After: %v", err)
	}
}

func TestNewRateLimiterErrors(t *testing.T) {
	tests := []struct {
		cfg  filters.RateConfig
		want string
	}{
		{filters.RateConfig{PerIP: -1}, "per-address rate"},
		{filters.RateConfig{Route: math.NaN()}, "route rate"},
		{filters.RateConfig{Route: math.Inf(1)}, "route rate"},
		{filters.RateConfig{PerIP: 1, PerIPBurst: -1}, "per-address burst"},
		{filters.RateConfig{Route: 1, RouteBurst: -2}, "route burst"},
		{filters.RateConfig{PerIPBurst: 5}, "per-address burst 5 given without a rate"},
		{filters.RateConfig{RouteBurst: 5}, "route burst 5 given without a rate"},
		{filters.RateConfig{PerIP: 1, MaxTracked: -1}, "tracked"},
		{filters.RateConfig{PerIP: 1, IPv6Prefix: -1}, "IPv6 prefix /-1"},
		{filters.RateConfig{PerIP: 1, IPv6Prefix: 8}, "IPv6 prefix /8"},
		{filters.RateConfig{PerIP: 1, IPv6Prefix: 129}, "IPv6 prefix /129"},
	}
	for _, tt := range tests {
		_, err := filters.NewRateLimiter(tt.cfg)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("NewRateLimiter(%+v) = %v, want an error containing %q", tt.cfg, err, tt.want)
		}
	}
}

func TestRateLimiterEvictionBounded(t *testing.T) {
	clock := newRLClock()
	rl := mustRateLimiter(t, filters.RateConfig{PerIP: 1, PerIPBurst: 2, MaxTracked: 100, Now: clock.Now})
	for i := 0; i < 10000; i++ {
		if err := rl.Admit(rlReq, rlAddr(i)); err != nil {
			t.Fatalf("new address %d refused: %v", i, err)
		}
		if n := rl.Tracked(); n > 100 {
			t.Fatalf("after %d addresses %d are tracked, want at most 100", i+1, n)
		}
	}
	// A cap split over shards still holds exactly.
	rl = mustRateLimiter(t, filters.RateConfig{PerIP: 1, MaxTracked: 5000, Now: clock.Now})
	for i := 0; i < 20000; i++ {
		_ = rl.Admit(rlReq, rlAddr(i))
	}
	if n := rl.Tracked(); n > 5000 || n < 5000*3/4 {
		t.Fatalf("%d tracked with the cap at 5000", n)
	}
}

// A full table drops the idle addresses, whose buckets have refilled, before any busy one: a
// sender being limited is not forgiven because others came and went.
func TestRateLimiterEvictsIdleFirst(t *testing.T) {
	clock := newRLClock()
	rl := mustRateLimiter(t, filters.RateConfig{PerIP: 1, PerIPBurst: 1, MaxTracked: 64, Now: clock.Now})
	for i := 1; i < 64; i++ {
		if err := rl.Admit(rlReq, rlAddr(i)); err != nil {
			t.Fatal(err)
		}
	}
	clock.Advance(2 * time.Second) // 1..63 are full again, well past the refill of 1 s
	busy := rlAddr(0)
	if err := rl.Admit(rlReq, busy); err != nil {
		t.Fatal(err)
	}
	if n := rl.Tracked(); n != 64 {
		t.Fatalf("%d tracked, want 64", n)
	}
	if err := rl.Admit(rlReq, rlAddr(1000)); err != nil { // full: evicts
		t.Fatal(err)
	}
	if n := rl.Tracked(); n != 2 {
		t.Errorf("%d tracked after eviction, want 2 (the busy and the new address)", n)
	}
	if err := rl.Admit(rlReq, busy); relay.KindOf(err) != relay.KindRateLimited {
		t.Errorf("busy address after eviction: %v, want still limited", err)
	}
}

// Concurrent requests take exactly the tokens there are: with the clock stopped, no more than the
// bursts are admitted, however the requests interleave.
func TestRateLimiterConcurrent(t *testing.T) {
	const addrs, perAddrBurst, routeBurst, goroutines, each = 20, 5, 50, 16, 200
	for _, route := range []bool{false, true} {
		t.Run(fmt.Sprintf("route=%v", route), func(t *testing.T) {
			clock := newRLClock()
			cfg := filters.RateConfig{PerIP: 1, PerIPBurst: perAddrBurst, Now: clock.Now}
			want := addrs * perAddrBurst
			if route {
				cfg.Route, cfg.RouteBurst = 1, routeBurst
				want = routeBurst
			}
			rl := mustRateLimiter(t, cfg)
			var admitted [addrs]atomic.Int64
			var wg sync.WaitGroup
			for g := 0; g < goroutines; g++ {
				wg.Go(func() {
					for i := 0; i < each; i++ {
						k := (g + i) % addrs
						err := rl.Admit(rlReq, rlAddr(k))
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

// Eviction racing with admission, for the race detector.
func TestRateLimiterConcurrentEviction(t *testing.T) {
	clock := newRLClock()
	rl := mustRateLimiter(t, filters.RateConfig{PerIP: 10, PerIPBurst: 1, Route: 1e6, MaxTracked: 300, Now: clock.Now})
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Go(func() {
			for i := 0; i < 2000; i++ {
				_ = rl.Admit(rlReq, rlAddr(g*100000+i%700))
				if i%100 == 0 {
					clock.Advance(10 * time.Millisecond)
				}
			}
		})
	}
	wg.Wait()
	if n := rl.Tracked(); n > 300 {
		t.Errorf("%d tracked, want at most 300", n)
	}
}

// heapInUse returns the bytes in in-use heap spans after a full collection.
func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// floodDistinct sends one request from each of n distinct addresses, with the clock stopped so
// that no bucket refills and every eviction is of a busy address: the worst case. It returns the
// growth of the heap in use and the addresses tracked at the end.
func floodDistinct(tb testing.TB, n, maxTracked int) (growth int64, tracked int) {
	if maxTracked == filters.DefaultMaxTracked {
		maxTracked = 0 // and so the default is tested too
	}
	clock := newRLClock()
	before := heapInUse()
	rl := mustRateLimiter(tb, filters.RateConfig{PerIP: 1, PerIPBurst: 5, MaxTracked: maxTracked, Now: clock.Now})
	r := httptest.NewRequest(http.MethodPost, "/hook", nil)
	for i := 0; i < n; i++ {
		if err := rl.Admit(r, rlAddr(i)); err != nil {
			tb.Fatalf("address %d refused: %v", i, err)
		}
	}
	after := heapInUse()
	tracked = rl.Tracked()
	runtime.KeepAlive(rl)
	return int64(after) - int64(before), tracked
}

// Memory stays bounded under a flood of distinct source addresses: measured, not assumed.
func TestRateLimiterMemoryBounded(t *testing.T) {
	n, maxTracked := 1_000_000, filters.DefaultMaxTracked
	if raceEnabled || testing.Short() {
		n, maxTracked = 100_000, 10_000
	}
	start := time.Now()
	growth, tracked := floodDistinct(t, n, maxTracked)
	perAddr := float64(growth) / float64(tracked)
	t.Logf("%d distinct addresses, MaxTracked %d: %d tracked, heap in use grew %.1f MiB (%.0f B per tracked address; unbounded, %d addresses would take about %.0f MiB), %v",
		n, maxTracked, tracked, float64(growth)/(1<<20), perAddr, n, perAddr*float64(n)/(1<<20), time.Since(start).Round(time.Millisecond))
	if tracked > maxTracked {
		t.Errorf("%d addresses tracked, more than MaxTracked %d", tracked, maxTracked)
	}
	// A tracked address costs a limiter (80 B) and its map slot, about 170 B in all: 400 B each is
	// generous, and still far below keeping all n = 10 x MaxTracked addresses.
	if ceiling := int64(400 * maxTracked); growth > ceiling {
		t.Errorf("heap grew %d bytes, over the %d-byte ceiling for %d tracked addresses", growth, ceiling, maxTracked)
	}
}

func BenchmarkRateLimiter(b *testing.B) {
	const addrs = 1 << 14
	pool := make([]netip.Addr, addrs)
	for i := range pool {
		pool[i] = rlAddr(i * 7919)
	}
	// Rates high enough that every request is admitted: the hot path, with the real clock.
	for _, bc := range []struct {
		name string
		cfg  filters.RateConfig
	}{
		{"per-address", filters.RateConfig{PerIP: 1e9, PerIPBurst: 1e9}},
		{"route", filters.RateConfig{Route: 1e12, RouteBurst: 1e9}},
		{"both", filters.RateConfig{PerIP: 1e9, PerIPBurst: 1e9, Route: 1e12, RouteBurst: 1e9}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			rl := mustRateLimiter(b, bc.cfg)
			var seq atomic.Uint64
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				i := seq.Add(1) * 4099
				for pb.Next() {
					if err := rl.Admit(rlReq, pool[i%addrs]); err != nil {
						b.Fatal(err)
					}
					i++
				}
			})
		})
	}
	// Refusals: one address over its rate, the case a flood from one sender exercises.
	b.Run("refused", func(b *testing.B) {
		rl := mustRateLimiter(b, filters.RateConfig{PerIP: 1e-6, PerIPBurst: 1})
		_ = rl.Admit(rlReq, pool[0])
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if rl.Admit(rlReq, pool[0]) == nil {
					b.Fatal("admitted")
				}
			}
		})
	})
}

// One new address per operation; reports the heap each tracked address costs. For the figure at a
// million senders: -bench RateLimiterDistinctAddrs -benchtime 1000000x.
func BenchmarkRateLimiterDistinctAddrs(b *testing.B) {
	for _, bc := range []struct {
		name string
		max  int
	}{
		{"MaxTracked=100000", 100_000},
		{"unbounded", math.MaxInt32},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			growth, tracked := floodDistinct(b, b.N, bc.max)
			b.ReportMetric(float64(growth)/float64(tracked), "heapB/tracked")
			b.ReportMetric(float64(growth)/(1<<20), "heapMiB")
			b.ReportMetric(float64(tracked), "tracked")
		})
	}
}
