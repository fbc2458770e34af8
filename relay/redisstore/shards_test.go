package redisstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hookrelay/hookrelay/relay"
	"github.com/hookrelay/hookrelay/relay/redistest"
)

// Listings merge the shards in order however the entries fall, also when each shard is read a
// few entries at a time (the runs resume below or above what every shard has covered).
func TestShardedListingsMerge(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	for _, shards := range []int{1, 5} {
		t.Run(fmt.Sprint("shards=", shards), func(t *testing.T) {
			s, err := New(redis.NewClient(&redis.Options{Addr: srv.Addr}), Options{Prefix: uniquePrefix("merge"),
				History: 24 * time.Hour, Shards: shards})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			s.listChunk, s.deadBudget = 3, 4
			ctx := t.Context()
			const n = 30
			var byArrival, dead []string
			deadAt := map[string]int{}
			for i := range n {
				id := fmt.Sprintf("m%02d", i)
				target := "a"
				if i%4 == 0 {
					target = "b"
				}
				recv := at((i * 7) % n) // a permutation: arrival order is not ID order
				_, claimed, err := s.EnqueueLeased(ctx, testMsg(id, recv, target), "", 0, time.Minute, []string{target})
				if err != nil || len(claimed) != 1 {
					t.Fatalf("EnqueueLeased(%s) = %d, %v", id, len(claimed), err)
				}
				if i%3 == 0 {
					deadAt[claimed[0].ID] = 100 + (i*11)%7 // ties: then by ID
					err = s.Bury(ctx, claimed[0], at(deadAt[claimed[0].ID]), relay.Failure{Status: 400})
					dead = append(dead, claimed[0].ID)
				} else {
					err = s.Ack(ctx, claimed[0])
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			for sec := n - 1; sec >= 0; sec-- {
				for i := range n {
					if (i*7)%n == sec {
						byArrival = append(byArrival, fmt.Sprintf("m%02d", i))
					}
				}
			}
			slices.SortFunc(dead, func(a, b string) int {
				if deadAt[a] != deadAt[b] {
					return deadAt[a] - deadAt[b]
				}
				return strings.Compare(a, b)
			})
			if shards > 1 {
				used := 0
				for _, sh := range s.shards {
					if c, _ := s.rdb.ZCard(ctx, sh.deadSet()).Result(); c > 0 {
						used++
					}
				}
				if used < 3 {
					t.Fatalf("dead letters on %d of %d shards: the test does not spread them", used, shards)
				}
			}

			var got []string
			for cursor := ""; ; {
				page, next, err := s.ListMessages(ctx, relay.MessageFilter{Limit: 4, Cursor: cursor}, at(1000))
				if err != nil {
					t.Fatal(err)
				}
				for _, r := range page {
					got = append(got, r.ID)
				}
				if next == "" {
					break
				}
				cursor = next
			}
			if !slices.Equal(got, byArrival) {
				t.Errorf("messages paged by 4 = %v, want newest first %v", got, byArrival)
			}

			for _, fl := range []relay.DeadFilter{{}, {Target: "b"}} {
				var want []string
				for _, id := range dead {
					if fl.Target == "" || strings.HasSuffix(id, "."+fl.Target) {
						want = append(want, id)
					}
				}
				var got []string
				for {
					fl.Limit = 3
					page, err := s.ListDead(ctx, fl)
					if err != nil {
						t.Fatal(err)
					}
					if len(page) == 0 {
						break
					}
					got = append(got, ids(page)...)
					fl.After = page[len(page)-1].ID
				}
				if !slices.Equal(got, want) {
					t.Errorf("dead letters (target %q) paged by 3 = %v, want %v", fl.Target, got, want)
				}
			}
			if c, err := s.CountDead(ctx); err != nil || c != len(dead) {
				t.Errorf("CountDead = %d, %v; want %d", c, err, len(dead))
			}
			for _, id := range dead[:2] {
				if d, err := s.GetDead(ctx, id); err != nil || d.ID != id {
					t.Errorf("GetDead(%s) = %v, %v", id, d, err)
				}
				if err := s.ReplayDead(ctx, id, at(2000)); err != nil {
					t.Errorf("ReplayDead(%s): %v", id, err)
				}
			}
			if err := s.DropDead(ctx, dead[2]); err != nil {
				t.Errorf("DropDead: %v", err)
			}
			if c, _ := s.CountDead(ctx); c != len(dead)-3 {
				t.Errorf("CountDead after two replays and a drop = %d, want %d", c, len(dead)-3)
			}
		})
	}
}

// The shard count is recorded: a store of another count refuses a prefix that holds live
// deliveries or dead letters (also one an earlier release wrote, without the record), naming the
// procedure; once drained, it takes the prefix over, and the store of the old count, at its next
// sweep, refuses in turn.
func TestShardCountChangeRefused(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	ctx := t.Context()
	prefix := uniquePrefix("reshard")
	one := openStoreWith(t, srv.Addr, Options{Prefix: prefix})
	four := openStoreWith(t, srv.Addr, Options{Prefix: prefix, Shards: 4})
	_, claimed, err := one.EnqueueLeased(ctx, testMsg("m1", at(0), "a"), "k1", time.Hour, time.Minute, []string{"a"})
	if err != nil {
		t.Fatal(err)
	}
	if err := one.rdb.Del(ctx, "{"+prefix+"}:shards").Err(); err != nil { // as an earlier release left it
		t.Fatal(err)
	}
	wantRefused := func(s *Store, what string, err error) {
		t.Helper()
		if !errors.Is(err, ErrShardCount) || !strings.Contains(err.Error(), "docs/SCALING.md") {
			t.Fatalf("%s = %v; want ErrShardCount naming docs/SCALING.md", what, err)
		}
	}
	_, err = four.Enqueue(ctx, testMsg("m2", at(1), "a"), "k2", time.Hour)
	wantRefused(four, "Enqueue with 4 shards on data of 1", err)
	_, err = four.Claim(ctx, "a", at(1), time.Minute, 10)
	wantRefused(four, "Claim", err)
	wantRefused(four, "Ping", four.Ping(ctx))

	// Drained: the delivery goes dead, then is dropped; the dedupe key stays behind.
	if err := one.Bury(ctx, claimed[0], at(2), relay.Failure{Status: 400}); err != nil {
		t.Fatal(err)
	}
	wantRefused(four, "Ping with a dead letter left", four.Ping(ctx))
	if err := one.DropDead(ctx, "m1.a"); err != nil {
		t.Fatal(err)
	}
	if err := four.Ping(ctx); err != nil {
		t.Fatalf("Ping once drained = %v", err)
	}
	if _, err := four.Enqueue(ctx, testMsg("m3", at(3), "a"), "k3", time.Hour); err != nil {
		t.Fatal(err)
	}
	if v, _ := four.rdb.Get(ctx, "{"+prefix+"}:shards").Result(); v != "4" {
		t.Fatalf("recorded shard count %q, want 4", v)
	}
	_, err = one.Sweep(ctx, at(4))
	wantRefused(one, "Sweep of the store of the old count", err)
	_, err = one.Enqueue(ctx, testMsg("m4", at(5), "a"), "k4", time.Hour)
	wantRefused(one, "Enqueue of the store of the old count", err)
}

func openStoreWith(t *testing.T, addr string, opt Options) *Store {
	t.Helper()
	s, err := New(redis.NewClient(&redis.Options{Addr: addr}), opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// With MinReplicas an enqueue answers only once a replica has it. A paused replica confirms
// nothing: the enqueue fails with ErrNotReplicated but returns what it stored (to be delivered),
// and a duplicate of it fails too, since the key it found is on no replica yet; once the replica
// is back, the same duplicate is confirmed.
func TestMinReplicas(t *testing.T) {
	primary := redistest.Start(t, redistest.Options{})
	replica := primary.StartReplica(t)
	s := openStoreWith(t, primary.Addr, Options{Prefix: "wait", MinReplicas: 1}) // a second: a busy machine's replica confirms in time
	ctx := t.Context()
	if _, err := s.Enqueue(ctx, testMsg("m1", at(0), "a"), "k1", time.Hour); err != nil {
		t.Fatalf("Enqueue with the replica up = %v", err)
	}
	replica.Pause()
	dup, claimed, err := s.EnqueueLeased(ctx, testMsg("m2", at(1), "a"), "k2", time.Hour, time.Minute, []string{"a"})
	if !errors.Is(err, ErrNotReplicated) || dup || len(claimed) != 1 {
		t.Fatalf("EnqueueLeased with the replica paused = %v, %d claimed, %v; want stored, 1 claimed, ErrNotReplicated",
			dup, len(claimed), err)
	}
	if dup, err := s.Enqueue(ctx, testMsg("m3", at(2), "a"), "k2", time.Hour); !errors.Is(err, ErrNotReplicated) || !dup {
		t.Fatalf("duplicate with the replica paused = %v, %v; want a duplicate and ErrNotReplicated", dup, err)
	}
	if dup, err := s.Enqueue(ctx, testMsg("m4", at(3), "a"), "k1", time.Hour); !errors.Is(err, ErrNotReplicated) || !dup {
		t.Fatalf("duplicate of a replicated key with the replica paused = %v, %v; want ErrNotReplicated", dup, err)
	}
	replica.Resume()
	if dup, err := s.Enqueue(ctx, testMsg("m5", at(4), "a"), "k2", time.Hour); err != nil || !dup {
		t.Fatalf("duplicate with the replica back = %v, %v; want a confirmed duplicate", dup, err)
	}
	if err := s.Ack(ctx, claimed[0]); err != nil {
		t.Fatalf("Ack of the delivery stored while unconfirmed: %v", err)
	}
	// The replica has what the primary has.
	r := redis.NewClient(&redis.Options{Addr: replica.Addr})
	defer r.Close()
	if n, err := r.Exists(ctx, s.shards[0].dedupe("k1"), s.shards[0].dedupe("k2")).Result(); err != nil || n != 2 {
		t.Fatalf("replica holds %d of the 2 dedupe keys (%v)", n, err)
	}
}

// On a Cluster each enqueue waits for the replica of the primary that ran it: with one replica
// paused, exactly the webhooks whose shard is on its primary fail, the others are confirmed.
func TestMinReplicasCluster(t *testing.T) {
	c := redistest.StartCluster(t, redistest.ClusterOptions{Primaries: 3, Replicas: 1})
	s, err := New(redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()}),
		Options{Prefix: "cwait", Shards: 16, MinReplicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := t.Context()
	paused := c.SlotOwner(slotOf(string(s.shards[0])[1 : len(s.shards[0])-2]))
	onPaused := map[shard]bool{}
	for _, sh := range s.shards {
		onPaused[sh] = c.SlotOwner(slotOf(string(sh)[1:len(sh)-2])) == paused
	}
	replica := c.ReplicaOf(paused)
	replica.Pause()
	defer replica.Resume()
	var failed, confirmed atomic.Int32
	var wg sync.WaitGroup
	for i := range 48 {
		wg.Go(func() { // at once: the unconfirmed ones each wait out the timeout
			key := fmt.Sprint("k", i)
			sh := s.shards[s.shardFor(key)]
			on := onPaused[sh]
			_, err := s.Enqueue(ctx, testMsg(fmt.Sprint("m", i), at(i), "a"), key, time.Hour)
			switch {
			case on && errors.Is(err, ErrNotReplicated):
				failed.Add(1)
			case !on && err == nil:
				confirmed.Add(1)
			default:
				t.Errorf("Enqueue %s (shard %s, on the paused replica's primary: %v) = %v", key, sh, on, err)
			}
		})
	}
	wg.Wait()
	if failed.Load() == 0 || confirmed.Load() == 0 {
		t.Fatalf("%d unconfirmed, %d confirmed: the test should see both", failed.Load(), confirmed.Load())
	}
}

// After 10,000 webhooks on a Cluster of three primaries with 16 shards, every primary holds a
// share of the keys: the shards' tags are spread evenly over the slots, as Redis computes them.
func TestClusterSpreadsKeys(t *testing.T) {
	c := redistest.StartCluster(t, redistest.ClusterOptions{Primaries: 3})
	s, err := New(redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), PoolSize: 64}), Options{Prefix: "spread", Shards: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	for i, sh := range s.shards {
		tag := string(sh)[1 : len(sh)-2]
		r, err := c.Nodes[0].Do("cluster", "keyslot", string(sh)+"x")
		if err != nil || int(r.(int64)) != slotOf(tag) || slotOf(tag)*16/16384 != i {
			t.Fatalf("shard %d %s: cluster keyslot %v (%v), ours %d", i, sh, r, err, slotOf(tag))
		}
	}
	const webhooks = 10000
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for i := next.Add(1); i <= webhooks; i = next.Add(1) {
				id := fmt.Sprint("m", i)
				if _, err := s.Enqueue(ctx, testMsg(id, at(0), "a"), "r/job-"+id+"/succeeded", time.Hour); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	total, keys := int64(0), map[string]int64{}
	for _, p := range c.Primaries() {
		r, err := p.Do("dbsize")
		if err != nil {
			t.Fatal(err)
		}
		keys[p.Addr] = r.(int64)
		total += r.(int64)
	}
	// Per webhook: message, delivery, dedupe key; per shard: due set, dedupe index (and the marker).
	if want := int64(3*webhooks + 2*16 + 1); total != want {
		t.Fatalf("%d keys on the primaries, want %d", total, want)
	}
	for addr, n := range keys {
		if n < total/4 { // 5 or 6 of the 16 shards each, and webhooks spread evenly over the shards
			t.Errorf("primary %s holds %d of %d keys, less than a quarter", addr, n, total)
		}
	}
	t.Logf("keys per primary after %d webhooks: %v", webhooks, keys)
}

// redirects counts the cluster redirections the node clients see.
type redirects struct{ moved, ask, tryagain atomic.Int64 }

func (r *redirects) DialHook(next redis.DialHook) redis.DialHook { return next }

func (r *redirects) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		r.note(cmd)
		return err
	}
}

func (r *redirects) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, c := range cmds {
			r.note(c)
		}
		return err
	}
}

func (r *redirects) note(c redis.Cmder) {
	if err := c.Err(); err != nil {
		switch {
		case strings.HasPrefix(err.Error(), "MOVED "):
			r.moved.Add(1)
		case strings.HasPrefix(err.Error(), "ASK "):
			r.ask.Add(1)
		case strings.HasPrefix(err.Error(), "TRYAGAIN"):
			r.tryagain.Add(1)
		}
	}
}

// A slot moves to another primary while two stores (two relays) take and deliver webhooks: its
// clients meet ASK and TRYAGAIN while its keys move and MOVED after, and nothing acknowledged
// is lost. Senders retry what was refused, as providers do; deliveries whose settle was refused
// come back when their lease expires, so duplicates may be delivered, never fewer.
func TestClusterSlotMigrationUnderLoad(t *testing.T) {
	c := redistest.StartCluster(t, redistest.ClusterOptions{Primaries: 3})
	var seen redirects
	var stores []*Store
	for range 2 {
		client := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), PoolSize: 32})
		client.OnNewNode(func(n *redis.Client) { n.AddHook(&seen) })
		s, err := New(client, Options{Prefix: "migrate", Shards: 16})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		stores = append(stores, s)
	}
	ctx := context.Background()
	var (
		mu                 sync.Mutex
		acked              = map[string]bool{}
		delivered          = map[string]int{}
		nAcked, nDelivered atomic.Int64
		next               atomic.Int64
		stop               = make(chan struct{})
		wg                 sync.WaitGroup
	)
	refused := make(chan *relay.Message, 1<<16)
	for w := range 8 {
		wg.Go(func() { // senders: each webhook until it is acknowledged; a refused one is sent again later
			for i := 0; ; i++ {
				var m *relay.Message
				select {
				case <-stop:
					if len(refused) == 0 {
						return
					}
					m = <-refused
				default:
					if i%2 == 1 && len(refused) > 0 { // as many new ones as retries
						m = <-refused
					} else {
						m = testMsg(fmt.Sprint("m", next.Add(1)), time.Now(), "a")
					}
				}
				if _, err := stores[(w+i)%2].Enqueue(ctx, m, "r/"+m.ID+"/succeeded", time.Hour); err != nil {
					refused <- m
					continue
				}
				mu.Lock()
				acked[m.ID] = true
				mu.Unlock()
				nAcked.Add(1)
			}
		})
	}
	var consumers sync.WaitGroup
	done := make(chan struct{})
	for w := range 4 {
		consumers.Go(func() { // a dispatcher: claim, deliver, ack
			for i := 0; ; i++ {
				select {
				case <-done:
					return
				default:
				}
				s := stores[(w+i)%2]
				ds, err := s.Claim(ctx, "a", time.Now(), 2*time.Second, 20)
				if err != nil {
					continue // as the dispatcher does: look again
				}
				for _, d := range ds {
					mu.Lock()
					delivered[d.Message.ID]++
					mu.Unlock()
					nDelivered.Add(1)
					_ = s.Ack(ctx, d) // refused: delivered again after the lease
				}
			}
		})
	}
	progress := func() {
		a, d := nAcked.Load(), nDelivered.Load()
		redistest.WaitFor(t, "webhooks acknowledged and delivered", func() bool {
			return nAcked.Load() >= a+20 && nDelivered.Load() >= d+20
		})
	}
	slot := slotOf(string(stores[0].shards[0])[1 : len(stores[0].shards[0])-2])
	// A replica that learns the slot map before the migration and is idle during it: its first
	// webhook to the slot after it is answered MOVED, which the busy clients may never see (an ASK
	// or TRYAGAIN makes go-redis reload the map, and it may reload after the last step).
	var lateSeen redirects
	lateClient := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
	lateClient.OnNewNode(func(n *redis.Client) { n.AddHook(&lateSeen) })
	late, err := New(lateClient, Options{Prefix: "migrate", Shards: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer late.Close()
	inSlot := func(name string) (*relay.Message, string) { // a webhook whose keys are in the migrated slot
		for i := 0; ; i++ {
			m := testMsg(fmt.Sprint(name, i), time.Now(), "a")
			if key := "r/" + m.ID + "/succeeded"; late.shardFor(key) == 0 {
				return m, key
			}
		}
	}
	early, earlyKey := inSlot("early")
	if _, err := late.Enqueue(ctx, early, earlyKey, time.Hour); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	acked[early.ID] = true
	mu.Unlock()
	from := c.SlotOwner(slot)
	redistest.WaitFor(t, "keys in the slot", func() bool {
		r, err := from.Do("cluster", "countkeysinslot", slot)
		n, _ := r.(int64)
		return err == nil && n >= 60
	})
	to := c.Primaries()[0]
	if to == from {
		to = c.Primaries()[1]
	}
	c.MigrateSlot(slot, to, progress)
	progress()
	m, key := inSlot("late")
	if _, err := late.Enqueue(ctx, m, key, time.Hour); err != nil {
		t.Fatalf("enqueue through the client that still names the old owner: %v", err)
	}
	mu.Lock()
	acked[m.ID] = true
	mu.Unlock()
	close(stop)
	wg.Wait()
	redistest.WaitFor(t, "every acknowledged webhook delivered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for id := range acked {
			if delivered[id] == 0 {
				return false
			}
		}
		return true
	})
	close(done)
	consumers.Wait()
	if owner := c.SlotOwner(slot); owner != to {
		t.Fatalf("slot %d is on %s after the migration, want %s", slot, owner.Addr, to.Addr)
	}
	t.Logf("redirections: %d ASK, %d TRYAGAIN, %d MOVED under load; %d MOVED by the idle client",
		seen.ask.Load(), seen.tryagain.Load(), seen.moved.Load(), lateSeen.moved.Load())
	if seen.ask.Load()+seen.tryagain.Load() == 0 || lateSeen.moved.Load() == 0 {
		t.Fatalf("redirections seen: %d ASK and %d TRYAGAIN under load, %d MOVED by the idle client; the migration should show both kinds",
			seen.ask.Load(), seen.tryagain.Load(), lateSeen.moved.Load())
	}
	dups := 0
	for _, n := range delivered {
		dups += n - 1
	}
	t.Logf("%d webhooks acknowledged, all delivered (%d duplicates); %d MOVED, %d ASK, %d TRYAGAIN",
		len(acked), dups, seen.moved.Load(), seen.ask.Load(), seen.tryagain.Load())
}
