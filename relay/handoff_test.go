package relay_test

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookrelay/hookrelay/relay"
	"github.com/hookrelay/hookrelay/relay/boltstore"
)

// claimCounter is the real store with the deliveries that Claim returned counted.
type claimCounter struct {
	*boltstore.Store
	claimed atomic.Int64
}

func (s *claimCounter) Claim(ctx context.Context, target string, now time.Time, lease time.Duration, max int) ([]*relay.Delivery, error) {
	ds, err := s.Store.Claim(ctx, target, now, lease, max)
	s.claimed.Add(int64(len(ds)))
	return ds, err
}

func startCounted(t *testing.T, rec *recorder, concurrency int) (*claimCounter, string, func()) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "relay.db")
	store := &claimCounter{Store: openStore(t, path)}
	t.Cleanup(func() { store.Close() })
	target := rec.target("app")
	target.Concurrency = concurrency
	_, url, stop := serve(t, relay.Config{Routes: []relay.Route{route(t, "fashn", "fashn", "app")},
		Targets: []relay.Target{target}, Store: store, PollInterval: time.Hour, ShutdownGrace: 2 * time.Second})
	return store, url, stop
}

func postFashn(t *testing.T, url string, i int) {
	t.Helper()
	resp, err := http.Post(url+"/hooks/fashn", "application/json",
		strings.NewReader(fmt.Sprintf(`{"id":"job-%d","status":"completed","output":[]}`, i)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("webhook %d: %d, want 202", i, resp.StatusCode)
	}
}

// wantDeliveredOnce waits until the store holds nothing for app (every delivery acked, so no
// more can come) and checks that each job reached the target exactly once.
func wantDeliveredOnce(t *testing.T, store relay.Store, rec *recorder, n int) {
	t.Helper()
	eventually(t, "every delivery acked", func() bool {
		d, err := store.Depth(t.Context(), "app")
		return err == nil && d == 0 && len(rec.got()) >= n
	})
	seen := map[string]int{}
	for _, r := range rec.got() {
		seen[r.header.Get("X-Relay-Job-Id")]++
	}
	for i := range n {
		if c := seen[fmt.Sprintf("job-%d", i)]; c != 1 {
			t.Errorf("job-%d delivered %d times, want 1", i, c)
		}
	}
	if got := len(rec.got()); got != n {
		t.Errorf("target got %d requests, want %d", got, n)
	}
}

// With room at the target, a fresh webhook goes from ingress to its dispatcher in memory: no
// claim takes anything from the store, and the poll interval (an hour here) never matters.
func TestHandoffNeedsNoClaim(t *testing.T) {
	rec := newRecorder(t, nil)
	// Room for every webhook, however late the dispatcher's loop runs.
	const n = 40
	store, url, _ := startCounted(t, rec, n)
	for i := range n {
		postFashn(t, url, i)
	}
	wantDeliveredOnce(t, store, rec, n)
	if c := store.claimed.Load(); c != 0 {
		t.Errorf("Claim returned %d deliveries, want 0: every delivery should have been handed off", c)
	}
	for _, r := range rec.got() {
		if a := r.header.Get("X-Relay-Attempt"); a != "1" {
			t.Errorf("X-Relay-Attempt = %q, want 1", a)
		}
	}
}

// A target without room gets the rest through the store, exactly once each, with no poll needed.
func TestHandoffOverflowGoesThroughStore(t *testing.T) {
	release := make(chan struct{})
	rec := newRecorder(t, func(_ int, _ *http.Request, _ http.ResponseWriter) { <-release })
	store, url, _ := startCounted(t, rec, 1)
	const n = 10
	for i := range n {
		postFashn(t, url, i)
	}
	close(release)
	wantDeliveredOnce(t, store, rec, n)
	// One handed off and in flight; with its only slot busy the rest were stored queued and
	// claimed one by one.
	if c := store.claimed.Load(); c != n-1 {
		t.Errorf("Claim returned %d deliveries, want %d", c, n-1)
	}
}

// Hand-offs still waiting at shutdown go back to the store, due at once, and the next process
// delivers them.
func TestHandoffReleasedAtShutdown(t *testing.T) {
	release := make(chan struct{})
	var blocked atomic.Bool
	blocked.Store(true)
	rec := newRecorder(t, func(_ int, r *http.Request, w http.ResponseWriter) {
		if blocked.Load() {
			select {
			case <-release:
			case <-r.Context().Done():
			}
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	path := filepath.Join(t.TempDir(), "relay.db")
	store := openStore(t, path)
	target := rec.target("app")
	target.Concurrency = 1
	cfg := relay.Config{Routes: []relay.Route{route(t, "fashn", "fashn", "app")}, Targets: []relay.Target{target},
		Store: store, PollInterval: time.Hour, ShutdownGrace: 100 * time.Millisecond}
	_, url, stop := serve(t, cfg)
	postFashn(t, url, 0) // in flight, blocked
	postFashn(t, url, 1) // stored queued: the only slot is busy
	eventually(t, "the first attempt", func() bool { return len(rec.got()) == 1 })
	stop()
	close(release)
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}
	blocked.Store(false)
	store = openStore(t, path)
	t.Cleanup(func() { store.Close() })
	cfg.Store = store
	serve(t, cfg)
	eventually(t, "both delivered after the restart", func() bool {
		d, err := store.Depth(t.Context(), "app")
		return err == nil && d == 0
	})
	ok := map[string]bool{}
	for _, r := range rec.got()[1:] {
		ok[r.header.Get("X-Relay-Job-Id")] = true
	}
	if !ok["job-0"] || !ok["job-1"] {
		t.Errorf("after the restart the target got %v, want job-0 and job-1", ok)
	}
}

// A target whose slots are all busy gets no hand-off: the webhook waits in the store, so that a
// stream of new webhooks cannot crowd out retries and backlog there, and no hand-off waits in
// memory while its lease runs.
func TestBusyTargetGetsNoHandoff(t *testing.T) {
	release := make(chan struct{})
	rec := newRecorder(t, func(n int, _ *http.Request, _ http.ResponseWriter) {
		if n == 1 {
			<-release
		}
	})
	store, url, _ := startCounted(t, rec, 1)
	postFashn(t, url, 0) // handed off, in flight until released
	eventually(t, "the first attempt", func() bool { return len(rec.got()) == 1 })
	postFashn(t, url, 1) // its slot is busy: stored queued
	close(release)
	wantDeliveredOnce(t, store, rec, 2)
	if c := store.claimed.Load(); c != 1 {
		t.Errorf("Claim returned %d deliveries, want 1 (job-1 from the store)", c)
	}
}

// failSwitch is claimCounter whose enqueues fail while fail is set.
type failSwitch struct {
	*claimCounter
	fail atomic.Bool
}

func (s *failSwitch) EnqueueLeased(ctx context.Context, m *relay.Message, key string, ttl, lease time.Duration,
	leased []string) (bool, []*relay.Delivery, error) {
	if s.fail.Load() {
		return false, nil, fmt.Errorf("disk on fire")
	}
	return s.claimCounter.EnqueueLeased(ctx, m, key, ttl, lease, leased)
}

// A reservation made for a webhook that was not stored (the store failed) or not new (a
// duplicate) is given back: with room for one hand-off only, later webhooks are still handed off.
func TestHandoffReservationGivenBackOnFailureAndDuplicate(t *testing.T) {
	rec := newRecorder(t, nil)
	store := &failSwitch{claimCounter: &claimCounter{Store: openStore(t, filepath.Join(t.TempDir(), "relay.db"))}}
	t.Cleanup(func() { store.Close() })
	target := rec.target("app")
	target.Concurrency = 1
	_, url, _ := serve(t, relay.Config{Routes: []relay.Route{route(t, "fashn", "fashn", "app")},
		Targets: []relay.Target{target}, Store: store, PollInterval: time.Hour, StoreProbeInterval: 10 * time.Millisecond})
	post := func(i int) int {
		t.Helper()
		resp, err := http.Post(url+"/hooks/fashn", "application/json",
			strings.NewReader(fmt.Sprintf(`{"id":"job-%d","status":"completed","output":[]}`, i)))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	store.fail.Store(true)
	for range 3 {
		if s := post(0); s != http.StatusServiceUnavailable {
			t.Fatalf("while the store fails: %d, want 503", s)
		}
	}
	store.fail.Store(false)
	idle := func() bool { // acked, so its slot is free again
		d, err := store.Depth(t.Context(), "app")
		return err == nil && d == 0
	}
	eventually(t, "the store answering again", func() bool { return post(0) == http.StatusAccepted })
	eventually(t, "job-0 delivered", func() bool { return len(rec.got()) == 1 && idle() })
	for range 3 {
		if s := post(0); s != http.StatusOK {
			t.Fatalf("a duplicate: %d, want 200", s)
		}
	}
	for i := 1; i <= 3; i++ {
		if s := post(i); s != http.StatusAccepted {
			t.Fatalf("job-%d: %d, want 202", i, s)
		}
		eventually(t, "the delivery", func() bool { return len(rec.got()) == i+1 && idle() })
	}
	wantDeliveredOnce(t, store, rec, 4)
	if c := store.claimed.Load(); c != 0 {
		t.Errorf("Claim returned %d deliveries, want 0: a reservation leaked and webhooks went through the store", c)
	}
}

// Forwarded sender headers come first: a target's own header of the same name wins, so a sender
// cannot replace the target's credential; the relay refuses bad forward_headers in New.
func TestForwardedHeadersYieldToTargetHeaders(t *testing.T) {
	rec := newRecorder(t, nil)
	target := rec.target("app")
	target.Headers = []relay.Header{{Name: "Authorization", Value: "Bearer target"}}
	rt := route(t, "fashn", "fashn", "app")
	rt.ForwardHeaders = []string{"Authorization", "X-Request-Id"}
	h := startRelay(t, []relay.Route{rt}, target)
	req, _ := http.NewRequest(http.MethodPost, h.url+"/hooks/fashn", strings.NewReader(`{"id":"j1","status":"completed"}`))
	req.Header.Set("Authorization", "Bearer sender")
	req.Header.Set("X-Request-Id", "r-1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	eventually(t, "the delivery", func() bool { return len(rec.got()) == 1 })
	got := rec.got()[0].header
	if got.Get("Authorization") != "Bearer target" || got.Get("X-Request-Id") != "r-1" {
		t.Errorf("target got Authorization %q, X-Request-Id %q; want the target's own and r-1",
			got.Get("Authorization"), got.Get("X-Request-Id"))
	}

	bad := route(t, "fashn", "fashn", "app")
	bad.ForwardHeaders = []string{"Connection"}
	if _, err := relay.New(relay.Config{Routes: []relay.Route{bad}, Targets: []relay.Target{rec.target("app")},
		Store: h.store}); err == nil || !strings.Contains(err.Error(), "hop-by-hop") {
		t.Errorf("New with forward_headers [Connection] = %v, want a hop-by-hop error", err)
	}
}
