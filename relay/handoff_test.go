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
	// One handed off and in flight, perhaps a second waiting in the hand-off buffer (if the loop
	// had taken the first by then); the rest were stored queued and claimed.
	if c := store.claimed.Load(); c < n-2 || c > n-1 {
		t.Errorf("Claim returned %d deliveries, want %d or %d", c, n-2, n-1)
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
	postFashn(t, url, 1) // waits in the hand-off buffer
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

// A hand-off that waited so long that its lease could run out during the attempt is not attempted
// from memory: the store gives it to a claim once the lease has expired, so that no claim can
// race the attempt.
func TestHandoffNearLeaseExpiryGoesThroughStore(t *testing.T) {
	var offset atomic.Int64 // nanoseconds added to the real clock
	now := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	release := make(chan struct{})
	rec := newRecorder(t, func(n int, _ *http.Request, _ http.ResponseWriter) {
		if n == 1 {
			<-release
		}
	})
	store := &claimCounter{Store: openStore(t, filepath.Join(t.TempDir(), "relay.db"))}
	t.Cleanup(func() { store.Close() })
	target := rec.target("app")
	target.Concurrency, target.Timeout = 1, 30*time.Second
	serveURL := func() string {
		_, url, _ := serve(t, relay.Config{Routes: []relay.Route{route(t, "fashn", "fashn", "app")},
			Targets: []relay.Target{target}, Store: store, Now: now, Lease: time.Minute, PollInterval: 20 * time.Millisecond})
		return url
	}
	url := serveURL()
	postFashn(t, url, 0) // in flight until released
	eventually(t, "the first attempt", func() bool { return len(rec.got()) == 1 })
	postFashn(t, url, 1)                  // handed off (the loop took job-0 already), waiting for the slot
	offset.Store(int64(61 * time.Second)) // the 1 min enqueue lease has run out
	close(release)
	eventually(t, "job-1 delivered", func() bool { return len(rec.got()) == 2 })
	wantDeliveredOnce(t, store, rec, 2)
	if a := rec.got()[1].header.Get("X-Relay-Attempt"); a != "2" {
		t.Errorf("job-1 went out as attempt %s, want 2: claimed after its enqueue lease expired", a)
	}
	if c := store.claimed.Load(); c != 1 {
		t.Errorf("Claim returned %d deliveries, want 1 (job-1)", c)
	}
}
