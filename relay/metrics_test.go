package relay_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/hookrelay/hookrelay/filters"
	"github.com/hookrelay/hookrelay/relay"
	"github.com/hookrelay/hookrelay/relay/boltstore"
)

// sample sums the series of the named metric whose labels include every pair of labels (name,
// value, name, value...): counters and gauges by value, histograms by sample count.
func sample(t *testing.T, r *relay.Relay, name string, labels ...string) float64 {
	t.Helper()
	families, err := r.Metrics().Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	sum := 0.0
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if hasLabels(m, labels) {
				sum += m.GetCounter().GetValue() + m.GetGauge().GetValue() + float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return sum
}

func hasLabels(m *dto.Metric, labels []string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		found := false
		for _, l := range m.GetLabel() {
			if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// failingStore refuses every enqueue of one route, to show a store error as the sender sees it.
type failingStore struct {
	*boltstore.Store
	route string
}

func (s *failingStore) EnqueueLeased(ctx context.Context, m *relay.Message, key string, ttl, lease time.Duration,
	leased []string) (bool, []*relay.Delivery, error) {
	if m.Route == s.route {
		return false, nil, errors.New("disk on fire")
	}
	return s.Store.EnqueueLeased(ctx, m, key, ttl, lease, leased)
}

func TestMetricsCountEveryOutcome(t *testing.T) {
	flaky := newRecorder(t, func(n int, _ *http.Request, w http.ResponseWriter) {
		if n == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	refusing := newRecorder(t, func(_ int, _ *http.Request, w http.ResponseWriter) { w.WriteHeader(http.StatusBadRequest) })

	open := route(t, "open", "fashn", "flaky")
	denied := route(t, "denied", "fashn", "flaky")
	denied.Guards = []relay.Guard{must[*filters.Allowlist](t)(filters.NewAllowlist([]string{"10.0.0.0/8"}))}
	limited := route(t, "limited", "fashn", "flaky")
	limited.Guards = []relay.Guard{must[*filters.RateLimiter](t)(filters.NewRateLimiter(filters.RateConfig{PerIP: 0.001, PerIPBurst: 1}))}
	signed := route(t, "signed", "fashn", "flaky")
	signed.Verifier = must[*filters.URLToken](t)(filters.NewURLToken([]string{"right-token-0123456789"}, "token"))
	broken := route(t, "broken", "fashn", "flaky")
	dead := route(t, "dead", "fashn", "refusing")
	store := &failingStore{Store: openStore(t, filepath.Join(t.TempDir(), "relay.db")), route: "broken"}
	t.Cleanup(func() { store.Close() })
	r, url, _ := serve(t, relay.Config{Routes: []relay.Route{open, denied, limited, signed, broken, dead},
		Targets: []relay.Target{flaky.target("flaky"), refusing.target("refusing")}, Store: store,
		PollInterval: 50 * time.Millisecond})

	post := func(path, body string) int {
		t.Helper()
		resp, err := http.Post(url+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	job := func(id string) string { return `{"id":"` + id + `","status":"completed"}` }
	for _, c := range []struct {
		path, body string
		status     int
	}{
		{"/hooks/open", job("a"), 202},
		{"/hooks/open", job("a"), 200},
		{"/hooks/open", `{"id":`, 400},
		{"/hooks/open", `{"pad":"` + strings.Repeat("x", 64<<10) + `"}`, 413},
		{"/hooks/denied", job("b"), 403},
		{"/hooks/limited", job("c"), 202},
		{"/hooks/limited", job("d"), 429},
		{"/hooks/signed?token=wrong", job("e"), 401},
		{"/hooks/broken", job("f"), 503},
		{"/hooks/dead", job("g"), 202},
		{"/hooks/nowhere", job("h"), 404},
	} {
		if got := post(c.path, c.body); got != c.status {
			t.Fatalf("POST %s: %d, want %d", c.path, got, c.status)
		}
	}
	for _, c := range []struct {
		route, outcome string
		want           float64
	}{
		{"open", "accepted", 1}, {"open", "duplicate", 1}, {"open", "invalid", 1}, {"open", "too_large", 1},
		{"denied", "denied_ip", 1}, {"limited", "accepted", 1}, {"limited", "rate_limited", 1},
		{"signed", "bad_signature", 1}, {"broken", "store_error", 1}, {"dead", "accepted", 1},
		{"", "no_route", 1},
	} {
		if got := sample(t, r, "hookrelay_webhooks_received_total", "route", c.route, "outcome", c.outcome); got != c.want {
			t.Errorf("received{route=%q,outcome=%q} = %v, want %v", c.route, c.outcome, got, c.want)
		}
	}
	if got := sample(t, r, "hookrelay_webhooks_received_total"); got != 11 {
		t.Errorf("received in all = %v, want 11: every request counted once", got)
	}
	if got := sample(t, r, "hookrelay_dedupe_hits_total", "route", "open"); got != 1 {
		t.Errorf("dedupe hits = %v, want 1", got)
	}
	// Acknowledgements are timed: accepted and duplicate answers, nothing else.
	if got := sample(t, r, "hookrelay_ack_duration_seconds"); got != 4 {
		t.Errorf("ack latency samples = %v, want 4", got)
	}

	// "a" and "c" go to flaky (503 once, then delivered), "g" to refusing (400: dead at once).
	eventually(t, "deliveries", func() bool {
		return sample(t, r, "hookrelay_delivery_attempts_total", "target", "flaky", "outcome", "delivered") == 2 &&
			sample(t, r, "hookrelay_dead_letters_total", "target", "refusing") == 1
	})
	for _, c := range []struct {
		target, outcome string
		want            float64
	}{
		{"flaky", "retry", 1}, {"flaky", "delivered", 2}, {"refusing", "dead_letter", 1}, {"refusing", "delivered", 0},
	} {
		if got := sample(t, r, "hookrelay_delivery_attempts_total", "target", c.target, "outcome", c.outcome); got != c.want {
			t.Errorf("attempts{target=%q,outcome=%q} = %v, want %v", c.target, c.outcome, got, c.want)
		}
	}
	if got := sample(t, r, "hookrelay_delivery_duration_seconds", "target", "flaky"); got != 3 {
		t.Errorf("attempt duration samples for flaky = %v, want 3", got)
	}
	if got := sample(t, r, "hookrelay_end_to_end_seconds", "target", "flaky"); got != 2 {
		t.Errorf("end-to-end samples for flaky = %v, want 2 (one per delivery, not per attempt)", got)
	}
	if got := sample(t, r, "hookrelay_end_to_end_seconds", "target", "refusing"); got != 0 {
		t.Errorf("end-to-end samples for refusing = %v, want 0: nothing was delivered", got)
	}
	eventually(t, "empty queues", func() bool {
		return sample(t, r, "hookrelay_queue_depth", "target", "flaky") == 0 &&
			sample(t, r, "hookrelay_queue_depth", "target", "refusing") == 0
	})
}

// The queue gauges come from the store: depth counts what waits, the age is that of the oldest
// due delivery by the relay's clock. Without workers nothing is delivered.
func TestMetricsQueueDepthAndAge(t *testing.T) {
	rec := newRecorder(t, nil)
	store := openStore(t, filepath.Join(t.TempDir(), "relay.db"))
	t.Cleanup(func() { store.Close() })
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	r, err := relay.New(relay.Config{Routes: []relay.Route{route(t, "open", "fashn", "app")},
		Targets: []relay.Target{rec.target("app")}, Store: store, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(r.Handler())
	t.Cleanup(srv.Close)
	if got := sample(t, r, "hookrelay_queue_depth", "target", "app"); got != 0 {
		t.Fatalf("depth of an empty queue = %v", got)
	}
	for i := range 3 {
		resp, err := http.Post(srv.URL+"/hooks/open", "application/json",
			strings.NewReader(`{"id":"j`+strconv.Itoa(i)+`","status":"completed"}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		mu.Lock()
		now = now.Add(10 * time.Second)
		mu.Unlock()
	}
	if got := sample(t, r, "hookrelay_queue_depth", "target", "app"); got != 3 {
		t.Errorf("depth = %v, want 3", got)
	}
	// The first was received at +0 s; the clock now reads +30 s.
	if got := sample(t, r, "hookrelay_queue_oldest_due_age_seconds", "target", "app"); got != 30 {
		t.Errorf("oldest due age = %v, want 30", got)
	}
}

// The store's own write figures: each accepted webhook is one write of a group commit; a store
// that keeps no WriteStats shows none of these series.
func TestMetricsStoreWrites(t *testing.T) {
	store := openStore(t, filepath.Join(t.TempDir(), "relay.db"))
	t.Cleanup(func() { store.Close() })
	rec := newRecorder(t, nil)
	for _, tc := range []struct {
		name  string
		store relay.Store
		want  bool
	}{
		{"embedded", store, true},
		{"without WriteStats", struct{ relay.Store }{store}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Not run: nothing delivers, so the only writes are the enqueues.
			r, err := relay.New(relay.Config{Routes: []relay.Route{route(t, "open", "fashn", "app")},
				Targets: []relay.Target{rec.target("app")}, Store: tc.store})
			if err != nil {
				t.Fatal(err)
			}
			srv := httptest.NewServer(r.Handler())
			t.Cleanup(srv.Close)
			names := []string{"hookrelay_store_commit_writes_total", "hookrelay_store_commits_total",
				"hookrelay_store_page_writes_total", "hookrelay_store_write_seconds_total"}
			before := make([]float64, len(names))
			for i, name := range names {
				before[i] = sample(t, r, name)
			}
			for i := range 3 {
				resp, err := http.Post(srv.URL+"/hooks/open", "application/json",
					strings.NewReader(`{"id":"`+tc.name+strconv.Itoa(i)+`","status":"completed"}`))
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusAccepted {
					t.Fatalf("post: %d", resp.StatusCode)
				}
			}
			d := make([]float64, len(names))
			for i, name := range names {
				d[i] = sample(t, r, name) - before[i]
			}
			writes, commits, pages, seconds := d[0], d[1], d[2], d[3]
			if !tc.want {
				if writes != 0 || commits != 0 || pages != 0 || seconds != 0 {
					t.Errorf("store series without WriteStats: %v writes, %v commits, %v pages, %v s", writes, commits, pages, seconds)
				}
				return
			}
			if writes != 3 || commits < 1 || pages <= 0 || seconds <= 0 {
				t.Errorf("3 webhooks: %v writes (want 3), %v commits, %v pages, %v s", writes, commits, pages, seconds)
			}
		})
	}
}

// A delivery whose lease ran out (its holder died) counts as a lease recovery when claimed again.
func TestMetricsLeaseRecovery(t *testing.T) {
	rec := newRecorder(t, nil)
	store := openStore(t, filepath.Join(t.TempDir(), "relay.db"))
	t.Cleanup(func() { store.Close() })
	m := &relay.Message{ID: "m1", Route: "open", ReceivedAt: time.Now(), Body: []byte(fashnDone), Targets: []string{"app"}}
	if _, err := store.Enqueue(t.Context(), m, "", 0); err != nil {
		t.Fatal(err)
	}
	if got, err := store.Claim(t.Context(), "app", time.Now(), time.Millisecond, 1); err != nil || len(got) != 1 {
		t.Fatalf("claim: %v, %v", got, err) // and never settled, as by a process that died
	}
	r, _, _ := serve(t, relay.Config{Routes: []relay.Route{route(t, "open", "fashn", "app")},
		Targets: []relay.Target{rec.target("app")}, Store: store, PollInterval: 20 * time.Millisecond})
	eventually(t, "the delivery", func() bool { return len(rec.got()) == 1 })
	eventually(t, "the recovery counted", func() bool {
		return sample(t, r, "hookrelay_lease_recoveries_total", "target", "app") == 1
	})
}

func TestMetricsEndpoint(t *testing.T) {
	rec := newRecorder(t, nil)
	h := startRelay(t, []relay.Route{route(t, "fashn", "fashn", "app")}, rec.target("app"))
	h.post("/hooks/fashn", []byte(fashnDone))
	admin := httptest.NewServer(h.relay.AdminHandler(relay.AdminOptions{}))
	t.Cleanup(admin.Close)
	resp, err := http.Get(admin.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("GET /metrics: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	for _, want := range []string{
		`hookrelay_webhooks_received_total{outcome="accepted",route="fashn"} 1`,
		`hookrelay_ack_duration_seconds_bucket{route="fashn",le="+Inf"} 1`,
		`hookrelay_queue_depth{target="app"}`,
		`hookrelay_queue_oldest_due_age_seconds{target="app"}`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
