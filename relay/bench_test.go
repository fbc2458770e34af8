package relay_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hookrelay/hookrelay/relay"
	"github.com/hookrelay/hookrelay/relay/redisstore"
	"github.com/hookrelay/hookrelay/relay/redistest"
)

// BenchmarkIngress measures durable acknowledgements: 64 concurrent senders POST distinct fal-style
// webhooks through the real HTTP handler into a store; the 2xx means the store accepted it.
//
//	go test -run '^$' -bench Ingress -benchtime 20000x ./relay/
//
// Stores: embedded (bbolt, fsync on, group commit), and a real redis-server on this machine with
// no persistence, with AOF appendfsync everysec, and with AOF appendfsync always. "workers=off"
// measures ingress alone; "workers=on" also delivers everything to a local target while ingesting,
// as a running relay does.
func BenchmarkIngress(b *testing.B) {
	stores := []struct {
		name string
		open func(b *testing.B) relay.Store
	}{
		{"embedded", func(b *testing.B) relay.Store { return openStore(b, filepath.Join(b.TempDir(), "relay.db")) }},
		{"redis", func(b *testing.B) relay.Store { return openRedis(b, "") }},
		{"redis-aof-everysec", func(b *testing.B) relay.Store { return openRedis(b, "everysec") }},
		{"redis-aof-always", func(b *testing.B) relay.Store { return openRedis(b, "always") }},
	}
	for _, st := range stores {
		for _, workers := range []bool{false, true} {
			b.Run(fmt.Sprintf("%s/workers=%v", st.name, map[bool]string{false: "off", true: "on"}[workers]), func(b *testing.B) {
				benchIngress(b, st.open(b), workers)
			})
		}
	}
}

// openRedis starts a redis-server for the benchmark, with AOF at the given fsync policy ("": off).
func openRedis(b *testing.B, appendfsync string) relay.Store {
	srv := redistest.Start(b, redistest.Options{})
	client := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 128})
	if appendfsync != "" {
		ctx := context.Background()
		if err := client.ConfigSet(ctx, "appendfsync", appendfsync).Err(); err != nil {
			b.Fatal(err)
		}
		if err := client.ConfigSet(ctx, "appendonly", "yes").Err(); err != nil {
			b.Fatal(err)
		}
	}
	s, err := redisstore.New(client, redisstore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	return s
}

func benchIngress(b *testing.B, store relay.Store, workers bool) {
	var delivered atomic.Int64
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		delivered.Add(1)
	}))
	defer target.Close()
	defer store.Close()
	rt := route(b, "fal", "fal", "app")
	tg := relay.Target{Name: "app", URL: target.URL, Timeout: 5 * time.Second, Concurrency: 32, Retry: relay.DefaultRetryPolicy()}
	r, err := relay.New(relay.Config{Routes: []relay.Route{rt}, Targets: []relay.Target{tg}, Store: store})
	if err != nil {
		b.Fatal(err)
	}
	if workers {
		stop := r.StartWorkers()
		defer stop(context.Background())
	}
	srv := httptest.NewServer(r.Handler())
	defer srv.Close()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 128, MaxConnsPerHost: 128}}
	defer client.CloseIdleConnections()

	const senders = 64
	var seq atomic.Int64
	var mu sync.Mutex
	lat := make([]time.Duration, 0, b.N)
	// RunParallel starts parallelism x GOMAXPROCS goroutines.
	b.SetParallelism(max(senders/runtime.GOMAXPROCS(0), 1))
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		local := make([]time.Duration, 0, 1024)
		for pb.Next() {
			i := seq.Add(1)
			body := fmt.Sprintf(`{"request_id":"%08d-45d3-4afd-883e-ad3abe2a1c4d","gateway_request_id":"g-%d","status":"OK",`+
				`"payload":{"images":[{"url":"https://url.to/image.png","content_type":"image/png","width":1024,"height":1024}],"seed":196619188014358660},"error":null}`, i, i)
			t0 := time.Now()
			resp, err := client.Post(srv.URL+"/hooks/fal", "application/json", strings.NewReader(body))
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
			local = append(local, time.Since(t0))
		}
		mu.Lock()
		lat = append(lat, local...)
		mu.Unlock()
	})
	elapsed := time.Since(start)
	b.StopTimer()
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(float64(len(lat)-1)*p)].Microseconds()) / 1000 }
	b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "acks/s")
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	if workers {
		b.ReportMetric(float64(delivered.Load())/elapsed.Seconds(), "delivered/s")
	}
}
