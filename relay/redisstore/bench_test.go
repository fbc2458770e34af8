package redisstore

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hookrelay/hookrelay/relay"
	"github.com/hookrelay/hookrelay/relay/redistest"
)

// benchBody is a typical job result: 400 bytes of JSON.
var benchBody = []byte(`{"id":"` + strings.Repeat("x", 391) + `"}`)

func benchMsg(id string, now time.Time) *relay.Message {
	return &relay.Message{ID: id, Route: "fal-results", Provider: "fal", JobID: "req-" + id, JobStatus: "succeeded",
		ContentType: "application/json", SourceAddr: "203.0.113.9:40000", ReceivedAt: now, Body: benchBody,
		Targets: []string{"svc"}}
}

// BenchmarkEnqueueParallel is ingress under load: ~64 concurrent webhooks (on 2 cores), each a
// dedupe claim plus enqueue of a 400-byte body, against Redis without persistence and with AOF
// appendfsync everysec (what production should run).
//
//	go test -run '^$' -bench EnqueueParallel -benchtime 5s ./relay/redisstore/
func BenchmarkEnqueueParallel(b *testing.B) {
	plain := redistest.Start(b, redistest.Options{})
	aof := redistest.Start(b, redistest.Options{})
	enableAOF(b, aof.Addr)
	for _, tc := range []struct {
		name string
		srv  *redistest.Server
	}{{"aof=no", plain}, {"aof=everysec", aof}} {
		b.Run(tc.name, func(b *testing.B) {
			s := newStore(b, redis.NewClient(&redis.Options{Addr: tc.srv.Addr, PoolSize: 128}), uniquePrefix("bench"))
			defer s.Close()
			ctx := context.Background()
			now := time.Now()
			var seq atomic.Int64
			b.SetParallelism(32) // goroutines per GOMAXPROCS: 64 on 2 cores
			b.SetBytes(int64(len(benchBody)))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					id := strconv.FormatInt(seq.Add(1), 10)
					if _, err := s.Enqueue(ctx, benchMsg(id, now), "fal-results/req-"+id+"/succeeded", 72*time.Hour); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "enqueues/s")
		})
	}
}

// enableAOF turns on appendonly with appendfsync everysec through CONFIG SET (redistest only
// offers appendfsync always) and waits for the initial rewrite to finish.
func enableAOF(b *testing.B, addr string) {
	b.Helper()
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	for _, kv := range [][2]string{{"appendfsync", "everysec"}, {"appendonly", "yes"}} {
		if err := rdb.ConfigSet(ctx, kv[0], kv[1]).Err(); err != nil {
			b.Fatalf("CONFIG SET %s %s: %v", kv[0], kv[1], err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		info, err := rdb.Info(ctx, "persistence").Result()
		if err != nil {
			b.Fatal(err)
		}
		if strings.Contains(info, "aof_enabled:1") && strings.Contains(info, "aof_rewrite_in_progress:0") &&
			!strings.Contains(info, "aof_rewrite_scheduled:1") {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("AOF not on after 10s:\n%s", info)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// BenchmarkDedupeKeyMemory measures what Redis spends per dedupe key (its string with a TTL plus
// its entry in the expiry index) and per delivery (hash plus due entry) as INFO used_memory after
// enqueuing 100k messages with and without keys, on two fresh servers.
//
//	go test -run '^$' -bench DedupeKeyMemory -benchtime 1x ./relay/redisstore/
func BenchmarkDedupeKeyMemory(b *testing.B) {
	const n = 100_000
	grow := func(withKeys bool) int64 {
		srv := redistest.Start(b, redistest.Options{})
		s := newStore(b, redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 64}), "")
		defer s.Close()
		ctx := context.Background()
		before := usedMemory(b, s.rdb)
		now := time.Now()
		var wg sync.WaitGroup
		for w := range 64 {
			wg.Go(func() {
				for i := w; i < n; i += 64 {
					id := fmt.Sprintf("%016x", i) // a provider job ID is usually longer; see the key below
					key := ""
					if withKeys {
						key = "fal-results/" + id + "-5c2a-4b8e-9d61-0f3e7a1b2c4d/succeeded"
					}
					if _, err := s.Enqueue(ctx, benchMsg(id, now), key, 72*time.Hour); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		if b.Failed() {
			b.FailNow()
		}
		return usedMemory(b, s.rdb) - before
	}
	for range b.N {
		with, without := grow(true), grow(false)
		b.ReportMetric(float64(with-without)/n, "B/dedupe-key")
		b.ReportMetric(float64(without)/n, "B/delivery")
	}
}

func usedMemory(b *testing.B, rdb redis.UniversalClient) int64 {
	b.Helper()
	info, err := rdb.Info(context.Background(), "memory").Result()
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return n
		}
	}
	b.Fatalf("no used_memory in INFO memory")
	return 0
}

// BenchmarkScaleOut is the Redis side of one webhook to one target on the hot path: an enqueue
// leased to the caller (the dispatcher takes it in memory) and its ack, the two scripts every such
// webhook costs, from 64 goroutines. It runs against one redis-server and a Cluster of three
// primaries, and reports what docs/BENCHMARKS.md ("Scale out") models capacity with: the Redis
// main-thread CPU per webhook summed over the primaries (cpu-us/webhook), the busiest primary's
// share of it (busiest-%), the scripts (EVALSHA) and all commands Redis ran per webhook (those
// inside the scripts too: INFO commandstats counts them; WAIT is one per pipeline), and the busiest
// primary's share of the keys left (the dedupe keys and indexes). Only the primaries are measured.
//
//	go test -run '^$' -bench ScaleOut -benchtime 20000x ./relay/redisstore/
func BenchmarkScaleOut(b *testing.B) {
	one := func(b *testing.B) ([]*redistest.Server, func() redis.UniversalClient) {
		srv := redistest.Start(b, redistest.Options{})
		return []*redistest.Server{srv}, func() redis.UniversalClient {
			return redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 128})
		}
	}
	replicated := func(b *testing.B) ([]*redistest.Server, func() redis.UniversalClient) {
		srv := redistest.Start(b, redistest.Options{})
		srv.StartReplica(b)
		return []*redistest.Server{srv}, func() redis.UniversalClient {
			return redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 128})
		}
	}
	cluster := func(replicas int) func(b *testing.B) ([]*redistest.Server, func() redis.UniversalClient) {
		return func(b *testing.B) ([]*redistest.Server, func() redis.UniversalClient) {
			c := redistest.StartCluster(b, redistest.ClusterOptions{Primaries: 3, Replicas: replicas})
			return c.Primaries(), func() redis.UniversalClient {
				return redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), PoolSize: 128})
			}
		}
	}
	for _, tc := range []struct {
		name        string
		shards      int
		minReplicas int
		start       func(b *testing.B) ([]*redistest.Server, func() redis.UniversalClient)
	}{
		{"one-primary/shards=1", 1, 0, one},
		{"one-primary/shards=16", 16, 0, one},
		{"cluster-3/shards=16", 16, 0, cluster(0)},
		{"cluster-3/shards=48", 48, 0, cluster(0)},
		{"one-primary+replica/min_replicas=1", 1, 1, replicated},
		{"cluster-3+replicas/shards=48/min_replicas=1", 48, 1, cluster(1)},
	} {
		b.Run(tc.name, func(b *testing.B) {
			primaries, client := tc.start(b)
			s, err := New(client(), Options{Prefix: uniquePrefix("scale"), Shards: tc.shards, MinReplicas: tc.minReplicas})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			ctx := context.Background()
			if err := s.CheckLayout(ctx); err != nil {
				b.Fatal(err)
			}
			now := time.Now()
			var seq atomic.Int64
			before := redisUsage(b, primaries)
			b.SetParallelism(32)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					id := strconv.FormatInt(seq.Add(1), 10)
					_, claimed, err := s.EnqueueLeased(ctx, benchMsg(id, now), "fal-results/req-"+id+"/succeeded", 72*time.Hour,
						time.Minute, []string{"svc"})
					if err == nil && len(claimed) == 1 {
						err = s.Ack(ctx, claimed[0])
					}
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			after := redisUsage(b, primaries)
			var cpu, busiest, cmds, scripts float64
			var keys, mostKeys int64
			for i := range primaries {
				c := after[i].cpu - before[i].cpu
				cpu += c
				busiest = max(busiest, c)
				cmds += after[i].calls - before[i].calls
				scripts += after[i].scripts - before[i].scripts
				keys += after[i].keys
				mostKeys = max(mostKeys, after[i].keys)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "webhooks/s")
			b.ReportMetric(cpu*1e6/float64(b.N), "cpu-us/webhook")
			b.ReportMetric(100*busiest/cpu, "busiest-%")
			b.ReportMetric(cmds/float64(b.N), "cmds/webhook")
			b.ReportMetric(scripts/float64(b.N), "scripts/webhook")
			b.ReportMetric(100*float64(mostKeys)/float64(keys), "busiest-keys-%")
		})
	}
}

// usage is what a redis-server reports of its work: main-thread CPU seconds, commands run (but
// INFO's own, and those inside scripts included), scripts run, and keys.
type usage struct {
	cpu, calls, scripts float64
	keys                int64
}

func redisUsage(b *testing.B, servers []*redistest.Server) []usage {
	b.Helper()
	out := make([]usage, len(servers))
	for i, srv := range servers {
		for _, f := range []string{"used_cpu_user_main_thread", "used_cpu_sys_main_thread"} {
			v, err := strconv.ParseFloat(srv.Info("cpu", f), 64)
			if err != nil {
				b.Fatalf("INFO cpu %s on %s: %v", f, srv.Addr, err)
			}
			out[i].cpu += v
		}
		r, err := srv.Do("info", "commandstats")
		if err != nil {
			b.Fatal(err)
		}
		for line := range strings.Lines(r.(string)) {
			name, stats, ok := strings.Cut(strings.TrimSpace(line), ":calls=")
			if !ok || name == "cmdstat_info" {
				continue
			}
			n, _, _ := strings.Cut(stats, ",")
			calls, err := strconv.ParseFloat(n, 64)
			if err != nil {
				b.Fatalf("INFO commandstats: %q", line)
			}
			out[i].calls += calls
			if name == "cmdstat_evalsha" || name == "cmdstat_eval" {
				out[i].scripts += calls
			}
		}
		if r, err = srv.Do("dbsize"); err != nil {
			b.Fatal(err)
		}
		out[i].keys = r.(int64)
	}
	return out
}
