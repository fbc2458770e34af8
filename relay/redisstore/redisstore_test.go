package redisstore

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hookrelay/hookrelay/relay"
	"github.com/hookrelay/hookrelay/relay/redistest"
	"github.com/hookrelay/hookrelay/relay/storetest"
)

// prefixSeq makes every store of this test binary a namespace of its own, so that many stores
// share one redis-server.
var prefixSeq atomic.Int64

func uniquePrefix(name string) string { return fmt.Sprintf("%s%d", name, prefixSeq.Add(1)) }

func newStore(t testing.TB, client redis.UniversalClient, prefix string) *Store {
	t.Helper()
	s, err := New(client, Options{Prefix: prefix})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s
}

// openStore opens a store with a client of its own; the test closes it.
func openStore(t testing.TB, addr, prefix string) *Store {
	t.Helper()
	s := newStore(t, redis.NewClient(&redis.Options{Addr: addr}), prefix)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// The conformance suite on each topology the store supports: one server with the layout of
// earlier releases and with shards; a Cluster of three primaries with 16 shards, so that one
// store's keys are on every primary; a primary with a replica confirming every enqueue (WAIT).
func TestConformance(t *testing.T) {
	for _, tc := range []struct {
		name   string
		client func(t *testing.T) func() redis.UniversalClient
		opt    Options
	}{
		{"single", single, Options{}},
		{"single_shards", single, Options{Shards: 4}},
		{"cluster_shards", func(t *testing.T) func() redis.UniversalClient {
			c := redistest.StartCluster(t, redistest.ClusterOptions{Primaries: 3})
			return func() redis.UniversalClient { return redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()}) }
		}, Options{Shards: 16}},
		{"replicated", func(t *testing.T) func() redis.UniversalClient {
			primary := redistest.Start(t, redistest.Options{})
			primary.StartReplica(t)
			return func() redis.UniversalClient { return redis.NewClient(&redis.Options{Addr: primary.Addr}) }
		}, Options{MinReplicas: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			client := tc.client(t)
			storetest.Run(t, storetest.Harness{
				Open: func(t *testing.T, o storetest.Options) (relay.Store, func(*testing.T) relay.Store) {
					opt := tc.opt
					opt.Prefix, opt.History = uniquePrefix("conf"), o.History
					// A restarted relay process: a new client on the same data. Run closes both stores.
					open := func(t *testing.T) relay.Store {
						s, err := New(client(), opt)
						if err != nil {
							t.Fatalf("New: %v", err)
						}
						return s
					}
					return open(t), open
				},
			})
		})
	}
}

// single is a client maker on a redis-server of the test's own.
func single(t *testing.T) func() redis.UniversalClient {
	srv := redistest.Start(t, redistest.Options{})
	return func() redis.UniversalClient { return redis.NewClient(&redis.Options{Addr: srv.Addr}) }
}

// at is a fake time, sec seconds after a base far from the real clock.
func at(sec int) time.Time {
	return time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC).Add(time.Duration(sec) * time.Second)
}

func testMsg(id string, received time.Time, targets ...string) *relay.Message {
	return &relay.Message{ID: id, Route: "r", Provider: "generic", JobID: "job-" + id, ReceivedAt: received,
		Body: []byte(`{"id":"` + id + `"}`), Targets: targets}
}

func TestNewValidates(t *testing.T) {
	if _, err := New(nil, Options{}); err == nil {
		t.Error("New(nil client) = nil error")
	}
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer client.Close()
	for _, p := range []string{"a{b", "}", "{x}"} {
		if _, err := New(client, Options{Prefix: p}); err == nil || !strings.Contains(err.Error(), "braces") {
			t.Errorf("New(prefix %q) = %v, want an error about braces", p, err)
		}
	}
	s, err := New(client, Options{})
	if err != nil || s.shards[0] != "{hookrelay}:" {
		t.Fatalf("New(default prefix): base %q, %v", s.shards[0], err)
	}
}

// ClientOptions fills only zero settings, and names each setting it refuses as the file does.
func TestClientOptions(t *testing.T) {
	o, so, err := ClientOptions(redis.UniversalOptions{Addrs: []string{"127.0.0.1:26379"}, MasterName: "m", Password: "pw",
		ReadTimeout: 5 * time.Second}, Options{MinReplicas: 1})
	if err != nil || o.PoolSize != 128 || o.DialTimeout != 2*time.Second || o.ReadTimeout != 5*time.Second ||
		!o.ContextTimeoutEnabled || o.SentinelPassword != "pw" || so.Prefix != "hookrelay" || so.Shards != 1 || so.ReplicaTimeout != time.Second {
		t.Errorf("defaults: %+v, %+v, %v", o, so, err)
	}
	_, _, err = ClientOptions(redis.UniversalOptions{Addrs: []string{"nohost"}, PoolSize: -1},
		Options{Shards: 5000, MinReplicas: 1, ReplicaTimeout: 1500 * time.Millisecond})
	want := `shards: must be within 1..1024, got 5000 (1 keeps the layout of earlier releases)
addrs[0]: "nohost" is not host:port
pool_size: must be at least 1, got -1
replica_timeout: must be above 0 and at most half of read_timeout (2s), got 1.5s`
	if err == nil || err.Error() != want {
		t.Errorf("got\n%v\nwant\n%s", err, want)
	}
	for _, err := range err.(interface{ Unwrap() []error }).Unwrap() {
		if _, ok := errors.AsType[*relay.FieldError](err); !ok {
			t.Errorf("%v is not a FieldError", err)
		}
	}
}

// Every key carries the prefix's hash tag: the scripts touch undeclared keys, which is only safe
// on Cluster when they are all in one slot.
func TestKeysShareHashTag(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	s := openStore(t, srv.Addr, "tag")
	ctx := t.Context()
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()

	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := range 6 {
		_, err := s.Enqueue(ctx, testMsg(fmt.Sprint("m", i), at(i), "a", "b:c"), fmt.Sprintf("r/job-%d/succeeded", i), time.Hour)
		must(err)
	}
	_, err := s.Enqueue(ctx, testMsg("nokey", at(0), "a"), "", 0)
	must(err)
	ds, err := s.Claim(ctx, "a", at(10), time.Minute, 4)
	must(err)
	must(s.Ack(ctx, ds[0]))
	must(s.Retry(ctx, ds[1], at(100), relay.Failure{Status: 503}))
	must(s.Bury(ctx, ds[2], at(20), relay.Failure{Status: 400}))
	must(s.Bury(ctx, ds[3], at(21), relay.Failure{Status: 400}))
	must(s.ReplayDead(ctx, ds[3].ID, at(30)))
	_, err = s.Sweep(ctx, at(3601)) // one key, m0's
	must(err)
	_, err = s.ListDead(ctx, relay.DeadFilter{})
	must(err)

	var all []string
	iter := rdb.Scan(ctx, 0, "*", 1000).Iterator()
	for iter.Next(ctx) {
		all = append(all, iter.Val())
	}
	must(iter.Err())
	kinds := map[string]bool{}
	for _, k := range all {
		rest, ok := strings.CutPrefix(k, "{tag}:")
		if !ok {
			t.Errorf("key %q lacks the hash tag {tag}", k)
			continue
		}
		kind, _, _ := strings.Cut(rest, ":")
		kinds[kind] = true
	}
	for _, kind := range []string{"m", "d", "q", "k", "kx", "dead"} {
		if !kinds[kind] {
			t.Errorf("no %q key after the workload; keys: %q", kind, all)
		}
	}
}

// The dedupe key has a real TTL; its value is the expiry, and with history also the message ID
// (without history exactly what releases before history wrote, so that they can read it).
func TestDedupeKeyTTL(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	for _, history := range []time.Duration{0, time.Hour} {
		s, err := New(redis.NewClient(&redis.Options{Addr: srv.Addr}), Options{Prefix: uniquePrefix("ttl"), History: history})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		ctx := t.Context()
		const ttl = 72 * time.Hour
		recv := time.Now()
		if _, err := s.Enqueue(ctx, testMsg("m1", recv, "a"), "r/j/succeeded", ttl); err != nil {
			t.Fatal(err)
		}
		key := s.shards[0].dedupe("r/j/succeeded")
		pttl, err := s.rdb.PTTL(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		if pttl > ttl || pttl < ttl-10*time.Second {
			t.Errorf("PTTL = %v, want close to %v", pttl, ttl)
		}
		want := micros(recv.Add(ttl))
		if history > 0 {
			want += " m1"
		}
		if v, err := s.rdb.Get(ctx, key).Result(); err != nil || v != want {
			t.Errorf("history %v: key holds %q, %v; want %q", history, v, err, want)
		}
	}
}

// A dedupe key written by an earlier release holds only its expiry: it still dedupes, and with
// history on the duplicate is simply not counted (the key names no message).
func TestOldDedupeValue(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	client := redis.NewClient(&redis.Options{Addr: srv.Addr})
	s, err := New(client, Options{Prefix: "old", History: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := t.Context()
	if err := s.rdb.Set(ctx, s.shards[0].dedupe("k"), micros(at(3600)), 0).Err(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		id   string
		recv time.Time
		dup  bool
	}{{"m1", at(10), true}, {"m2", at(3600), false}, {"m3", at(3601), true}} {
		dup, err := s.Enqueue(ctx, testMsg(tc.id, tc.recv, "a"), "k", time.Hour)
		if err != nil || dup != tc.dup {
			t.Fatalf("Enqueue(%s) = %v, %v; want duplicate %v", tc.id, dup, err, tc.dup)
		}
	}
	rec, err := s.GetMessage(ctx, "m2", at(3601))
	if err != nil || rec.Duplicates != 1 {
		t.Fatalf("GetMessage(m2) = %+v, %v; want the duplicate counted on the new claim", rec, err)
	}
}

// The history sweep walks the index in chunks and still finds every message past retention.
func TestSweepHistoryChunks(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	s, err := New(redis.NewClient(&redis.Options{Addr: srv.Addr}), Options{Prefix: "chunks", History: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.sweepChunk = 3
	ctx := t.Context()
	for i := range 10 {
		m := testMsg(fmt.Sprintf("m%02d", i), at(i), "a")
		if _, err := s.Enqueue(ctx, m, "", 0); err != nil {
			t.Fatal(err)
		}
		ds, err := s.Claim(ctx, "a", at(i), time.Minute, 1)
		if err != nil || len(ds) != 1 {
			t.Fatalf("Claim = %v, %v", ds, err)
		}
		if i != 4 { // m04 stays in flight, and is kept
			if err := s.Ack(ctx, ds[0]); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n, err := s.Sweep(ctx, at(100).Add(time.Hour)); err != nil || n != 9 {
		t.Fatalf("Sweep = %d, %v; want 9", n, err)
	}
	page, _, err := s.ListMessages(ctx, relay.MessageFilter{}, at(100))
	if err != nil || len(page) != 1 || page[0].ID != "m04" {
		t.Fatalf("history after the sweep = %v, %v; want m04", page, err)
	}
}

// A retried Enqueue whose first run was stored (go-redis retries after a lost reply) is not a
// duplicate; a different message with a stored ID is an error and stores nothing.
func TestEnqueueTwiceIsIdempotent(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	s := openStore(t, srv.Addr, "idem")
	ctx := t.Context()
	m := testMsg("m1", at(0), "a", "b")
	for i := range 2 {
		if dup, err := s.Enqueue(ctx, m, "k", time.Hour); dup || err != nil {
			t.Fatalf("Enqueue #%d = %v, %v; want stored", i+1, dup, err)
		}
	}
	other := testMsg("m1", at(1), "a", "c")
	if _, err := s.Enqueue(ctx, other, "k2", time.Hour); err == nil || !strings.Contains(err.Error(), "unique") {
		t.Fatalf("Enqueue of another message with a stored ID = %v, want an error", err)
	}
	if n, err := s.rdb.Exists(ctx, s.shards[0].dedupe("k2"), s.shards[0].delivery("m1.c")).Result(); err != nil || n != 0 {
		t.Fatalf("the failed Enqueue left %d keys (%v)", n, err)
	}
	ds, err := s.Claim(ctx, "a", at(10), time.Minute, 10)
	if err != nil || len(ds) != 1 {
		t.Fatalf("Claim = %d deliveries, %v; want 1", len(ds), err)
	}
}

// Redis dies: Enqueue fails at once (ingress answers 503); Redis comes back with its AOF: the same
// Store works again and what it stored before is still there.
func TestRedisDownAndBack(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true})
	s := newStore(t, redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1,
		DialTimeout: 200 * time.Millisecond, ReadTimeout: 500 * time.Millisecond, WriteTimeout: 500 * time.Millisecond}), "down")
	defer s.Close()
	ctx := t.Context()
	if _, err := s.Enqueue(ctx, testMsg("m1", at(0), "a"), "k1", time.Hour); err != nil {
		t.Fatal(err)
	}

	srv.Kill()
	// Both fail rather than wait for Redis: the bound is for a hang, not a speed (go-redis' own
	// dial retries take a second or more on a loaded machine).
	failed := make(chan error, 2)
	go func() {
		_, err := s.Enqueue(ctx, testMsg("m2", at(1), "a"), "k2", time.Hour)
		failed <- err
		failed <- s.Ping(ctx)
	}()
	for _, op := range []string{"Enqueue", "Ping"} {
		select {
		case err := <-failed:
			if err == nil {
				t.Fatalf("%s with Redis down = nil error", op)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%s with Redis down still waits after 30 s", op)
		}
	}

	srv.Restart()
	deadline := time.Now().Add(5 * time.Second)
	for s.Ping(ctx) != nil { // go-redis reconnects by itself; stale pooled connections fail once
		if time.Now().After(deadline) {
			t.Fatal("no PONG within 5s of the restart")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Redis lost its script cache: EVALSHA's NOSCRIPT falls back to EVAL.
	if dup, err := s.Enqueue(ctx, testMsg("m2", at(1), "a"), "k2", time.Hour); dup || err != nil {
		t.Fatalf("Enqueue after the restart = %v, %v", dup, err)
	}
	if dup, err := s.Enqueue(ctx, testMsg("m3", at(2), "a"), "k1", time.Hour); !dup || err != nil {
		t.Fatalf("Enqueue with the key stored before the crash = %v, %v; want duplicate", dup, err)
	}
	ds, err := s.Claim(ctx, "a", at(10), time.Minute, 10)
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(ds); !slices.Equal(got, []string{"m1.a", "m2.a"}) {
		t.Fatalf("Claim = %v, want [m1.a m2.a]", got)
	}
}

func ids(ds []*relay.Delivery) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.ID
	}
	return out
}

// Two replicas (two clients on one prefix) race on one dedupe key and on one queue.
func TestTwoStoresRace(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	prefix := uniquePrefix("race")
	stores := []*Store{openStore(t, srv.Addr, prefix), openStore(t, srv.Addr, prefix)}
	ctx := t.Context()

	var fresh atomic.Int32
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			dup, err := stores[i%2].Enqueue(ctx, testMsg(fmt.Sprint("d", i), at(i), "dd"), "same-key", time.Hour)
			if err != nil {
				t.Errorf("Enqueue: %v", err)
			} else if !dup {
				fresh.Add(1)
			}
		})
	}
	wg.Wait()
	if n := fresh.Load(); n != 1 {
		t.Fatalf("%d of 50 enqueues with one key through two stores were new, want 1", n)
	}

	const messages = 200
	for w := range 10 {
		wg.Go(func() {
			for i := w; i < messages; i += 10 {
				if _, err := stores[i%2].Enqueue(ctx, testMsg(fmt.Sprint("m", i), at(i%7), "a"), "", 0); err != nil {
					t.Errorf("Enqueue: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	var mu sync.Mutex
	seen := map[string]int{}
	for w := range 16 {
		wg.Go(func() {
			s := stores[w%2]
			for {
				ds, err := s.Claim(ctx, "a", at(100), time.Hour, 5)
				if err != nil {
					t.Errorf("Claim: %v", err)
					return
				}
				if len(ds) == 0 {
					return
				}
				for _, d := range ds {
					mu.Lock()
					seen[d.ID]++
					mu.Unlock()
					if err := s.Ack(ctx, d); err != nil {
						t.Errorf("Ack(%s): %v", d.ID, err)
					}
				}
			}
		})
	}
	wg.Wait()
	if len(seen) != messages {
		t.Errorf("claimed %d distinct deliveries, want %d", len(seen), messages)
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("%s claimed %d times", id, n)
		}
	}
}

// Due, lease and dead times are microseconds in Redis: what is due within the same microsecond
// as now is due, and Since compares at the microsecond too.
func TestMicrosecondTimes(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	s := openStore(t, srv.Addr, "us")
	ctx := t.Context()
	recv := at(0).Add(1500 * time.Nanosecond) // 1.5 µs
	if _, err := s.Enqueue(ctx, testMsg("m1", recv, "a"), "", 0); err != nil {
		t.Fatal(err)
	}
	if next, ok, err := s.NextDue(ctx, "a"); err != nil || !ok || !next.Equal(at(0).Add(time.Microsecond)) {
		t.Fatalf("NextDue = %v, %v, %v; want the microsecond %v", next, ok, err, at(0).Add(time.Microsecond))
	}
	if ds, err := s.Claim(ctx, "a", at(0).Add(999*time.Nanosecond), time.Minute, 1); err != nil || len(ds) != 0 {
		t.Fatalf("Claim a microsecond early = %v, %v", ids(ds), err)
	}
	ds, err := s.Claim(ctx, "a", recv, time.Minute, 1)
	if err != nil || len(ds) != 1 {
		t.Fatalf("Claim at due = %v, %v", ids(ds), err)
	}
	if !ds[0].Message.ReceivedAt.Equal(recv) {
		t.Errorf("ReceivedAt = %v, want %v exactly", ds[0].Message.ReceivedAt, recv)
	}
	dead := at(5).Add(2500 * time.Nanosecond)
	if err := s.Bury(ctx, ds[0], dead, relay.Failure{Status: 400}); err != nil {
		t.Fatal(err)
	}
	d, err := s.GetDead(ctx, "m1.a")
	if err != nil || !d.DeadAt.Equal(dead.Truncate(time.Microsecond)) {
		t.Fatalf("GetDead: DeadAt %v, %v; want %v", d.DeadAt, err, dead.Truncate(time.Microsecond))
	}
	for _, tc := range []struct {
		since time.Time
		want  int
	}{{dead.Truncate(time.Microsecond), 1}, {dead, 0}, {at(5), 1}} {
		ds, err := s.ListDead(ctx, relay.DeadFilter{Since: tc.since})
		if err != nil || len(ds) != tc.want {
			t.Errorf("ListDead(Since %v) = %v, %v; want %d", tc.since, ids(ds), err, tc.want)
		}
	}
}

// A selective filter over more dead letters than one script run scans still fills its page.
func TestListDeadScansInRuns(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	s := openStore(t, srv.Addr, "scan")
	s.deadBudget = 7
	ctx := t.Context()
	for i := range 40 {
		target := "a"
		if i%10 == 9 {
			target = "b"
		}
		m := testMsg(fmt.Sprintf("m%02d", i), at(0), target)
		if _, err := s.Enqueue(ctx, m, "", 0); err != nil {
			t.Fatal(err)
		}
		ds, err := s.Claim(ctx, target, at(0), time.Minute, 1)
		if err != nil || len(ds) != 1 {
			t.Fatalf("Claim: %v, %v", ids(ds), err)
		}
		if err := s.Bury(ctx, ds[0], at(i), relay.Failure{Status: 400}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.ListDead(ctx, relay.DeadFilter{Target: "b", Limit: 3})
	if want := []string{"m09.b", "m19.b", "m29.b"}; err != nil || !slices.Equal(ids(got), want) {
		t.Fatalf("ListDead(target b, limit 3) = %v, %v; want %v", ids(got), err, want)
	}
	got, err = s.ListDead(ctx, relay.DeadFilter{Target: "b", After: "m29.b"})
	if want := []string{"m39.b"}; err != nil || !slices.Equal(ids(got), want) {
		t.Fatalf("ListDead(target b, after m29.b) = %v, %v; want %v", ids(got), err, want)
	}
	if _, err := s.ListDead(ctx, relay.DeadFilter{After: "m00.x"}); !errors.Is(err, relay.ErrNotFound) {
		t.Fatalf("ListDead(after an unknown ID) = %v, want ErrNotFound", err)
	}
}

func TestMessageCodec(t *testing.T) {
	m := &relay.Message{ID: "i", Route: "r", Provider: "p", JobID: "j", JobStatus: "s", ContentType: "c",
		SourceAddr: "a", ReceivedAt: time.Date(1969, 12, 31, 23, 59, 59, 999999999, time.UTC),
		Body: []byte("\x00\xff\r\n"), Targets: []string{"t1", "t2"},
		Headers: http.Header{"X-Github-Event": {"push"}, "X-Two": {"1", ""}}}
	b := encodeMessage(m)
	got, err := decodeMessage(string(b))
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != m.ID || got.Route != m.Route || got.Provider != m.Provider || got.JobID != m.JobID ||
		got.JobStatus != m.JobStatus || got.ContentType != m.ContentType || got.SourceAddr != m.SourceAddr ||
		!got.ReceivedAt.Equal(m.ReceivedAt) || !bytes.Equal(got.Body, m.Body) || !slices.Equal(got.Targets, m.Targets) ||
		!maps.EqualFunc(got.Headers, m.Headers, slices.Equal) {
		t.Fatalf("round trip = %+v, want %+v", got, m)
	}
	// A message of an earlier release: version 1, nothing after the targets.
	plain := *m
	plain.Headers = nil
	v1 := encodeMessage(&plain)
	v1 = append([]byte{messageV1}, v1[1:len(v1)-1]...) // no header count
	if got, err := decodeMessage(string(v1)); err != nil || got.Headers != nil || !slices.Equal(got.Targets, m.Targets) {
		t.Fatalf("decoding a version 1 message = %+v, %v", got, err)
	}
	for i := range len(b) { // every truncation is an error, never a panic
		if _, err := decodeMessage(string(b[:i])); err == nil {
			t.Errorf("decoding %d of %d bytes = nil error", i, len(b))
		}
	}
	if _, err := decodeMessage(string(b) + "x"); err == nil {
		t.Error("decoding with trailing bytes = nil error")
	}
	for _, us := range []int64{-1, 0, 1, 981173106000000} {
		if got, err := parseDeadKey(deadKey(us)); err != nil || got.UnixMicro() != us {
			t.Errorf("dead key of %d round trips to %v, %v", us, got, err)
		}
	}
	if deadKey(-1) >= deadKey(0) || deadKey(0) >= deadKey(1) {
		t.Error("dead keys do not sort like their times")
	}
}

// keysOf lists the keys of a store's prefix but the shard count it records (layout.go).
func keysOf(t *testing.T, rdb *redis.Client, prefix string) []string {
	t.Helper()
	var all []string
	iter := rdb.Scan(t.Context(), 0, "{"+prefix+"}:*", 1000).Iterator()
	for iter.Next(t.Context()) {
		if iter.Val() != "{"+prefix+"}:shards" {
			all = append(all, iter.Val())
		}
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	slices.Sort(all)
	return all
}

// Nothing stays behind once every delivery of a message is acked or its dead letter dropped; a
// message is stored once however many targets it has.
func TestSettledMessagesLeaveNothing(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	s := openStore(t, srv.Addr, "settle")
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	ctx := t.Context()
	for i := range 20 {
		_, claimed, err := s.EnqueueLeased(ctx, testMsg(fmt.Sprintf("m%02d", i), at(i), "a", "b"), "", 0, time.Minute, []string{"a"})
		if err != nil || len(claimed) != 1 {
			t.Fatalf("EnqueueLeased: %d, %v", len(claimed), err)
		}
		if err := s.Ack(ctx, claimed[0]); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(slices.DeleteFunc(keysOf(t, rdb, "settle"), func(k string) bool { return !strings.HasPrefix(k, "{settle}:m:") })); n != 20 {
		t.Fatalf("%d message keys while b's deliveries wait, want 20", n)
	}
	ds, err := s.Claim(ctx, "b", at(100), time.Minute, 100)
	if err != nil || len(ds) != 20 {
		t.Fatalf("Claim(b) = %d, %v", len(ds), err)
	}
	for i, d := range ds {
		if i%2 == 0 {
			err = s.Ack(ctx, d)
		} else if err = s.Bury(ctx, d, at(101), relay.Failure{Status: 400}); err == nil {
			err = s.DropDead(ctx, d.ID)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if left := keysOf(t, rdb, "settle"); len(left) != 0 {
		t.Fatalf("keys left after every delivery settled: %q", left)
	}
}

// Deliveries written by earlier releases (the message inside the delivery hash) are still served
// and leave nothing behind.
func TestLegacyDeliveries(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	s := openStore(t, srv.Addr, "legacy")
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	ctx := t.Context()
	m := testMsg("old", at(0), "a", "b")
	for _, target := range m.Targets {
		id := relay.DeliveryID(m.ID, target)
		if err := rdb.HSet(ctx, s.shards[0].delivery(id), "msg", encodeMessage(m), "target", target, "route", m.Route).Err(); err != nil {
			t.Fatal(err)
		}
		if err := rdb.ZAdd(ctx, s.shards[0].due(target), redis.Z{Score: float64(at(0).UnixMicro()), Member: id}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	claim := func(target string, now time.Time) *relay.Delivery {
		t.Helper()
		ds, err := s.Claim(ctx, target, now, time.Minute, 10)
		if err != nil || len(ds) != 1 || string(ds[0].Message.Body) != string(m.Body) {
			t.Fatalf("Claim(%s) = %v, %v; want the legacy delivery with its message", target, ds, err)
		}
		return ds[0]
	}
	b := claim("b", at(1))
	if err := s.Bury(ctx, b, at(1), relay.Failure{Status: 400}); err != nil {
		t.Fatal(err)
	}
	if d, err := s.GetDead(ctx, b.ID); err != nil || string(d.Message.Body) != string(m.Body) {
		t.Fatalf("GetDead of a legacy dead letter = %v, %v", d, err)
	}
	if ds, err := s.ListDead(ctx, relay.DeadFilter{}); err != nil || len(ds) != 1 || string(ds[0].Message.Body) != string(m.Body) {
		t.Fatalf("ListDead of a legacy dead letter = %v, %v", ds, err)
	}
	if err := s.DropDead(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.Ack(ctx, claim("a", at(1))); err != nil {
		t.Fatal(err)
	}
	if left := slices.DeleteFunc(keysOf(t, rdb, "legacy"), func(k string) bool { return strings.HasSuffix(k, ":kx") }); len(left) != 0 {
		t.Fatalf("keys left: %q", left)
	}
}

// WriteStats counts the pipelines Redis answered, not those that never reached it: with Redis
// gone, a failed enqueue leaves the figures as they were.
func TestWriteStatsCountsOnlyAnsweredPipelines(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	s := openStore(t, srv.Addr, uniquePrefix("ws"))
	ctx := t.Context()
	if _, err := s.Enqueue(ctx, testMsg("m1", at(0), "a"), "k1", time.Hour); err != nil {
		t.Fatal(err)
	}
	before := s.WriteStats()
	if before.Commits != 1 || before.Writes != 1 || before.Time <= 0 || before.PagesCounted {
		t.Fatalf("after one enqueue: %+v, want 1 commit of 1 write, its time, no pages", before)
	}
	srv.Kill()
	if _, err := s.Enqueue(ctx, testMsg("m2", at(1), "a"), "k2", time.Hour); err == nil {
		t.Fatal("enqueue with Redis gone succeeded")
	}
	if after := s.WriteStats(); after != before {
		t.Errorf("a pipeline that never reached Redis was counted: %+v, then %+v", before, after)
	}
}
