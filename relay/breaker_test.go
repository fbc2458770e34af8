package relay_test

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookrelay/hookrelay/relay"
	"github.com/hookrelay/hookrelay/relay/boltstore"
)

// downStore is the real store, with an outage switched on and off: while down, Enqueue and Ping
// fail. It counts the enqueues that reached it.
type downStore struct {
	*boltstore.Store
	down     atomic.Bool
	enqueues atomic.Int64
	pings    atomic.Int64
}

var errOutage = errors.New("outage")

func (s *downStore) Enqueue(ctx context.Context, m *relay.Message, key string, ttl time.Duration) (bool, error) {
	s.enqueues.Add(1)
	if s.down.Load() {
		return false, errOutage
	}
	return s.Store.Enqueue(ctx, m, key, ttl)
}

func (s *downStore) EnqueueLeased(ctx context.Context, m *relay.Message, key string, ttl, lease time.Duration, leased []string) (bool, []*relay.Delivery, error) {
	s.enqueues.Add(1)
	if s.down.Load() {
		return false, nil, errOutage
	}
	return s.Store.EnqueueLeased(ctx, m, key, ttl, lease, leased)
}

func (s *downStore) Ping(ctx context.Context) error {
	s.pings.Add(1)
	if s.down.Load() {
		return errOutage
	}
	return s.Store.Ping(ctx)
}

// After one failed enqueue the store is known down: webhooks get 503 without reaching it, a probe
// pings it in the background, and once it answers webhooks are stored again.
func TestStoreKnownDownAnswers503AtOnce(t *testing.T) {
	rec := newRecorder(t, nil)
	store := &downStore{Store: openStore(t, filepath.Join(t.TempDir(), "relay.db"))}
	t.Cleanup(func() { store.Store.Close() })
	_, url, _ := serve(t, relay.Config{Routes: []relay.Route{route(t, "fashn", "fashn", "app")},
		Targets: []relay.Target{rec.target("app")}, Store: store, PollInterval: 50 * time.Millisecond,
		StoreProbeInterval: 20 * time.Millisecond})
	h := &harness{t: t, url: url}

	store.down.Store(true)
	if a := h.post("/hooks/fashn", []byte(`{"id":"a","status":"completed"}`)); a.status != http.StatusServiceUnavailable {
		t.Fatalf("first webhook in the outage: %d, want 503", a.status)
	}
	eventually(t, "a probe", func() bool { return store.pings.Load() > 0 })
	for i := range 5 {
		a := h.post("/hooks/fashn", []byte(`{"id":"b","status":"completed"}`))
		if a.status != http.StatusServiceUnavailable || a.header.Get("Retry-After") == "" {
			t.Fatalf("webhook %d in the outage: %d, want 503 with Retry-After", i, a.status)
		}
	}
	if n := store.enqueues.Load(); n != 1 {
		t.Fatalf("%d enqueues reached the store known to be down, want only the first", n)
	}

	store.down.Store(false)
	eventually(t, "a webhook stored after the outage", func() bool {
		return h.post("/hooks/fashn", []byte(`{"id":"c","status":"completed"}`)).status == http.StatusAccepted
	})
	eventually(t, "its delivery", func() bool { return len(rec.got()) == 1 })
}
