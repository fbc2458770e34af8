package relay_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hookrelay/hookrelay/filters"
	"github.com/hookrelay/hookrelay/relay"
	"github.com/hookrelay/hookrelay/relay/boltstore"
)

// recorder is an httptest target that records what it receives and answers as scripted.
type recorder struct {
	mu      sync.Mutex
	reqs    []received
	respond func(n int, r *http.Request, w http.ResponseWriter) // n counts from 1; nil: 200
	srv     *httptest.Server
}

type received struct {
	header http.Header
	body   []byte
	at     time.Time
}

func newRecorder(t *testing.T, respond func(n int, r *http.Request, w http.ResponseWriter)) *recorder {
	rec := &recorder{respond: respond}
	rec.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rec.mu.Lock()
		rec.reqs = append(rec.reqs, received{header: r.Header.Clone(), body: body, at: time.Now()})
		n := len(rec.reqs)
		rec.mu.Unlock()
		if rec.respond != nil {
			rec.respond(n, r, w)
		}
	}))
	t.Cleanup(rec.srv.Close)
	return rec
}

func (rec *recorder) got() []received {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]received(nil), rec.reqs...)
}

// target builds a relay.Target for rec with fast retries for tests.
func (rec *recorder) target(name string) relay.Target {
	return relay.Target{
		Name: name, URL: rec.srv.URL + "/hook", Timeout: 5 * time.Second, Concurrency: 4,
		Retry: relay.RetryPolicy{Initial: 10 * time.Millisecond, Multiplier: 2, Max: 50 * time.Millisecond,
			MaxAttempts: 5, MaxAge: time.Hour, MaxRetryAfter: 10 * time.Second},
	}
}

func route(t testing.TB, name, provider string, targets ...string) relay.Route {
	t.Helper()
	p, err := filters.NewPreset(provider, nil)
	if err != nil {
		t.Fatal(err)
	}
	return relay.Route{Name: name, Path: "/hooks/" + name, Provider: provider, Extractor: p, Targets: targets,
		MaxBody: 64 << 10, DedupeTTL: time.Hour, AckStatus: p.AckStatus()}
}

// harness is a running relay on a loopback port with a bbolt store.
type harness struct {
	t     *testing.T
	url   string
	relay *relay.Relay
	store *boltstore.Store
	path  string
	stop  func() // graceful shutdown, idempotent
}

func openStore(t testing.TB, path string) *boltstore.Store {
	t.Helper()
	s, err := boltstore.Open(path, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// serve runs a relay built from cfg on a loopback port until stop (idempotent) or the test's end.
func serve(t *testing.T, cfg relay.Config) (r *relay.Relay, url string, stop func()) {
	t.Helper()
	r, err := relay.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx, ln) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return r, "http://" + ln.Addr().String(), stop
}

func start(t *testing.T, store *boltstore.Store, path string, routes []relay.Route, targets []relay.Target) *harness {
	t.Helper()
	t.Cleanup(func() { store.Close() }) // after serve's cleanup: cleanups run last-in first-out
	r, url, stop := serve(t, relay.Config{Routes: routes, Targets: targets, Store: store,
		PollInterval: 50 * time.Millisecond, ShutdownGrace: 2 * time.Second})
	return &harness{t: t, url: url, relay: r, store: store, path: path, stop: stop}
}

func startRelay(t *testing.T, routes []relay.Route, targets ...relay.Target) *harness {
	path := filepath.Join(t.TempDir(), "relay.db")
	return start(t, openStore(t, path), path, routes, targets)
}

type answer struct {
	status int
	header http.Header
	body   map[string]any
}

func (h *harness) post(path string, body []byte) answer {
	h.t.Helper()
	resp, err := http.Post(h.url+path, "application/json", bytes.NewReader(body))
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	a := answer{status: resp.StatusCode, header: resp.Header}
	raw, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(raw, &a.body); err != nil {
		h.t.Fatalf("answer %d is not JSON: %q", resp.StatusCode, raw)
	}
	return a
}

// eventually polls cond for up to 10 s: a liveness bound, not a speed claim.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// drained waits until store holds no delivery for any of targets, leased ones included: every
// attempt has ended (acknowledged or dead-lettered) and none is due, so what the targets have
// received is final. A target records a request before the relay acknowledges it.
func drained(t *testing.T, store relay.Queue, targets ...string) {
	t.Helper()
	eventually(t, "the queues of "+strings.Join(targets, ", ")+" to empty", func() bool {
		for _, target := range targets {
			n, err := store.Depth(context.Background(), target)
			if err != nil {
				t.Fatalf("depth of %s: %v", target, err)
			}
			if n != 0 {
				return false
			}
		}
		return true
	})
}

const fashnDone = `{"id":"123a87r9-4129-4bb3-be18-9c9fb5bd7fc1-u1","status":"completed","output":["https://cdn.example/o.png"],"error":null}`

func TestNewThenDuplicate(t *testing.T) {
	rec := newRecorder(t, nil)
	h := startRelay(t, []relay.Route{route(t, "fashn", "fashn", "app")}, rec.target("app"))

	first := h.post("/hooks/fashn", []byte(fashnDone))
	if first.status != http.StatusAccepted || first.body["id"] == "" {
		t.Fatalf("first: %d %v, want 202 with an id", first.status, first.body)
	}
	dup := h.post("/hooks/fashn", []byte(fashnDone))
	if dup.status != http.StatusOK || dup.body["duplicate"] != true {
		t.Fatalf("duplicate: %d %v, want 200 {duplicate: true}", dup.status, dup.body)
	}
	eventually(t, "delivery", func() bool { return len(rec.got()) == 1 })
	drained(t, h.store, "app")
	got := rec.got()
	if len(got) != 1 {
		t.Fatalf("target got %d requests, want 1", len(got))
	}
	r := got[0]
	if string(r.body) != fashnDone {
		t.Errorf("body = %q, want it byte for byte", r.body)
	}
	id := first.body["id"].(string)
	for k, want := range map[string]string{
		"Content-Type":        "application/json",
		"X-Relay-Delivery-Id": relay.DeliveryID(id, "app"),
		"X-Relay-Route":       "fashn",
		"X-Relay-Provider":    "fashn",
		"X-Relay-Job-Id":      "123a87r9-4129-4bb3-be18-9c9fb5bd7fc1-u1",
		"X-Relay-Job-Status":  "succeeded",
		"X-Relay-Attempt":     "1",
		"X-Forwarded-For":     "127.0.0.1",
		"Webhook-Signature":   "", // the target has no secret
	} {
		if v := r.header.Get(k); v != want {
			t.Errorf("header %s = %q, want %q", k, v, want)
		}
	}
	if a, d := int(sample(t, h.relay, "hookrelay_webhooks_received_total", "outcome", "accepted")), int(sample(t, h.relay, "hookrelay_webhooks_received_total", "outcome", "duplicate")); a != 1 || d != 1 {
		t.Errorf("stats accepted=%d duplicates=%d, want 1 and 1", a, d)
	}
}

func TestFotorStatusesDedupedSeparately(t *testing.T) {
	rec := newRecorder(t, nil)
	h := startRelay(t, []relay.Route{route(t, "fotor", "fotor", "app")}, rec.target("app"))
	post := func(status int) answer {
		return h.post("/hooks/fotor", []byte(`{"taskId":"39371b3800cc4a7e9e24867b0dfdf25b","status":`+strconv.Itoa(status)+`,"type":"avatar"}`))
	}
	if a := post(0); a.status != http.StatusOK || a.body["id"] == nil {
		t.Fatalf("in progress: %d %v, want 200 (fotor's ack status) with an id", a.status, a.body)
	}
	if a := post(1); a.status != http.StatusOK || a.body["id"] == nil {
		t.Fatalf("completed: %d %v, want 200 with an id", a.status, a.body)
	}
	if a := post(1); a.status != http.StatusOK || a.body["duplicate"] != true {
		t.Fatalf("completed again: %d %v, want a duplicate", a.status, a.body)
	}
	eventually(t, "two deliveries", func() bool { return len(rec.got()) == 2 })
	drained(t, h.store, "app")
	statuses := map[string]int{}
	for _, r := range rec.got() {
		statuses[r.header.Get("X-Relay-Job-Status")]++
	}
	if len(rec.got()) != 2 || statuses["processing"] != 1 || statuses["succeeded"] != 1 {
		t.Fatalf("deliveries by status = %v, want processing and succeeded once each", statuses)
	}
}

func TestFanOutToTwoTargets(t *testing.T) {
	a, b := newRecorder(t, nil), newRecorder(t, nil)
	// b fails once: its retry must not make a deliver twice.
	b.respond = func(n int, _ *http.Request, w http.ResponseWriter) {
		if n == 1 {
			w.WriteHeader(http.StatusBadGateway)
		}
	}
	h := startRelay(t, []relay.Route{route(t, "abstrakt", "abstrakt", "a", "b")}, a.target("a"), b.target("b"))
	res := h.post("/hooks/abstrakt", []byte(`{"job_id":"job_abc123xyz","status":"succeeded"}`))
	if res.status != http.StatusAccepted {
		t.Fatalf("status %d, want 202", res.status)
	}
	eventually(t, "both targets", func() bool { return len(a.got()) == 1 && len(b.got()) == 2 })
	drained(t, h.store, "a", "b")
	if len(a.got()) != 1 || len(b.got()) != 2 {
		t.Fatalf("a got %d, b got %d; want 1 and 2 (one failure, one success)", len(a.got()), len(b.got()))
	}
	id := res.body["id"].(string)
	if got := a.got()[0].header.Get("X-Relay-Delivery-Id"); got != relay.DeliveryID(id, "a") {
		t.Errorf("a's delivery id %q", got)
	}
	bs := b.got()
	if bs[0].header.Get("X-Relay-Delivery-Id") != relay.DeliveryID(id, "b") ||
		bs[1].header.Get("X-Relay-Delivery-Id") != relay.DeliveryID(id, "b") {
		t.Errorf("b's delivery ids %q, %q: want the same stable id", bs[0].header.Get("X-Relay-Delivery-Id"), bs[1].header.Get("X-Relay-Delivery-Id"))
	}
}

func TestRetryThenSuccess(t *testing.T) {
	rec := newRecorder(t, func(n int, _ *http.Request, w http.ResponseWriter) {
		if n <= 2 {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	h := startRelay(t, []relay.Route{route(t, "fashn", "fashn", "app")}, rec.target("app"))
	h.post("/hooks/fashn", []byte(fashnDone))
	eventually(t, "three attempts", func() bool { return len(rec.got()) == 3 })
	eventually(t, "ack", func() bool {
		return int(sample(t, h.relay, "hookrelay_delivery_attempts_total", "outcome", "delivered")) == 1
	})
	drained(t, h.store, "app")
	got := rec.got()
	if len(got) != 3 {
		t.Fatalf("attempts = %d, want 3", len(got))
	}
	for i, r := range got {
		if a := r.header.Get("X-Relay-Attempt"); a != strconv.Itoa(i+1) {
			t.Errorf("request %d: X-Relay-Attempt %q", i+1, a)
		}
		if r.header.Get("X-Relay-Delivery-Id") != got[0].header.Get("X-Relay-Delivery-Id") {
			t.Errorf("delivery id changed between attempts")
		}
	}
	if n := int(sample(t, h.relay, "hookrelay_delivery_attempts_total", "outcome", "retry")); n != 2 {
		t.Errorf("retried = %d, want 2", n)
	}
	if dead, _ := h.store.ListDead(context.Background(), relay.DeadFilter{}); len(dead) != 0 {
		t.Errorf("dead letters: %d, want 0", len(dead))
	}
}

func TestPermanentFailureDeadLettersAtOnce(t *testing.T) {
	rec := newRecorder(t, func(_ int, _ *http.Request, w http.ResponseWriter) {
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, "unknown job\n")
	})
	h := startRelay(t, []relay.Route{route(t, "fashn", "fashn", "app")}, rec.target("app"))
	res := h.post("/hooks/fashn", []byte(fashnDone))
	var dead []*relay.Delivery
	eventually(t, "dead letter", func() bool {
		dead, _ = h.store.ListDead(context.Background(), relay.DeadFilter{})
		return len(dead) == 1
	})
	drained(t, h.store, "app")
	if len(rec.got()) != 1 {
		t.Fatalf("attempts = %d, want exactly 1 for a 400", len(rec.got()))
	}
	d := dead[0]
	if d.LastStatus != 400 || !strings.Contains(d.LastError, "400") || !strings.Contains(d.LastError, "unknown job") {
		t.Errorf("dead letter status %d error %q, want 400 with the target's answer", d.LastStatus, d.LastError)
	}
	if d.ID != relay.DeliveryID(res.body["id"].(string), "app") || string(d.Message.Body) != fashnDone {
		t.Errorf("dead letter %s does not hold the delivery", d.ID)
	}
}

func TestMaxAttemptsDeadLetters(t *testing.T) {
	rec := newRecorder(t, func(_ int, _ *http.Request, w http.ResponseWriter) { w.WriteHeader(http.StatusInternalServerError) })
	tg := rec.target("app")
	tg.Retry.MaxAttempts = 3
	h := startRelay(t, []relay.Route{route(t, "fashn", "fashn", "app")}, tg)
	h.post("/hooks/fashn", []byte(fashnDone))
	eventually(t, "dead letter", func() bool {
		return int(sample(t, h.relay, "hookrelay_delivery_attempts_total", "outcome", "dead_letter")) == 1
	})
	drained(t, h.store, "app")
	if n := len(rec.got()); n != 3 {
		t.Fatalf("attempts = %d, want 3", n)
	}
	dead, _ := h.store.ListDead(context.Background(), relay.DeadFilter{})
	if len(dead) != 1 || dead[0].LastStatus != 500 || dead[0].Attempt != 3 {
		t.Fatalf("dead letters %+v, want one with status 500 after 3 attempts", dead)
	}
}

func TestRetryAfterHonouredAndCapped(t *testing.T) {
	for _, tc := range []struct {
		name       string
		retryAfter string
		cap        time.Duration
		minGap     time.Duration
	}{
		{"honoured", "1", 10 * time.Second, time.Second},
		{"capped", "3600", 500 * time.Millisecond, 500 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := newRecorder(t, func(n int, _ *http.Request, w http.ResponseWriter) {
				if n == 1 {
					w.Header().Set("Retry-After", tc.retryAfter)
					w.WriteHeader(http.StatusTooManyRequests)
				}
			})
			tg := rec.target("app")
			// Backoff alone would wait an hour: only Retry-After can bring the retry sooner.
			tg.Retry.Initial, tg.Retry.Max, tg.Retry.MaxRetryAfter = time.Hour, time.Hour, tc.cap
			h := startRelay(t, []relay.Route{route(t, "fashn", "fashn", "app")}, tg)
			h.post("/hooks/fashn", []byte(fashnDone))
			eventually(t, "the retry", func() bool { return len(rec.got()) == 2 })
			got := rec.got()
			if gap := got[1].at.Sub(got[0].at); gap < tc.minGap-50*time.Millisecond {
				t.Fatalf("retried after %v, want at least %v", gap, tc.minGap)
			}
		})
	}
}

func TestCrashBetweenClaimAndAck(t *testing.T) {
	rec := newRecorder(t, nil)
	path := filepath.Join(t.TempDir(), "relay.db")
	store := openStore(t, path)
	rt := route(t, "fashn", "fashn", "app")
	r, err := relay.New(relay.Config{Routes: []relay.Route{rt}, Targets: []relay.Target{rec.target("app")}, Store: store})
	if err != nil {
		t.Fatal(err)
	}
	// Ingress only, no workers: then a worker claims the delivery and dies before acknowledging.
	srv := httptest.NewServer(r.Handler())
	resp, err := http.Post(srv.URL+"/hooks/fashn", "application/json", strings.NewReader(fashnDone))
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("post: %v %v", resp, err)
	}
	resp.Body.Close()
	srv.Close()
	claimed, err := store.Claim(context.Background(), "app", time.Now(), time.Hour, 10)
	if err != nil || len(claimed) != 1 {
		t.Fatalf("claim: %d, %v", len(claimed), err)
	}
	if err := store.Close(); err != nil { // the crash: no ack, an hour-long lease left behind
		t.Fatal(err)
	}

	h := start(t, openStore(t, path), path, []relay.Route{rt}, []relay.Target{rec.target("app")})
	eventually(t, "redelivery after restart", func() bool { return len(rec.got()) == 1 })
	if a := rec.got()[0].header.Get("X-Relay-Attempt"); a != "2" {
		t.Errorf("X-Relay-Attempt = %q, want 2 (the lost claim counts)", a)
	}
	eventually(t, "ack", func() bool {
		return int(sample(t, h.relay, "hookrelay_delivery_attempts_total", "outcome", "delivered")) == 1
	})
}

func TestGracefulShutdownFinishesDeliveriesInFlight(t *testing.T) {
	release := make(chan struct{})
	rec := newRecorder(t, func(int, *http.Request, http.ResponseWriter) { <-release })
	h := startRelay(t, []relay.Route{route(t, "fashn", "fashn", "app")}, rec.target("app"))
	h.post("/hooks/fashn", []byte(fashnDone))
	eventually(t, "delivery in flight", func() bool { return len(rec.got()) == 1 })
	stopped := make(chan struct{})
	go func() { h.stop(); close(stopped) }()
	// The shutdown is under way (the listener is closed) while the delivery is in flight.
	eventually(t, "the listener to close", func() bool {
		c, err := net.Dial("tcp", strings.TrimPrefix(h.url, "http://"))
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	close(release) // the target answers within the grace period
	<-stopped
	if n := int(sample(t, h.relay, "hookrelay_delivery_attempts_total", "outcome", "delivered")); n != 1 {
		t.Fatalf("delivered = %d, want the in-flight delivery acknowledged before shutdown", n)
	}
	if _, err := http.Post(h.url+"/hooks/fashn", "application/json", strings.NewReader(fashnDone)); err == nil {
		t.Fatal("the listener still accepts after shutdown")
	}
	if at, ok, err := h.store.NextDue(context.Background(), "app"); err != nil || ok {
		t.Fatalf("queue after shutdown: due %v %v %v, want empty", at, ok, err)
	}
}

func TestGracefulShutdownGivesBackDeliveriesPastGrace(t *testing.T) {
	rec := newRecorder(t, func(_ int, r *http.Request, _ http.ResponseWriter) { <-r.Context().Done() })
	tg := rec.target("app")
	tg.Timeout = 90 * time.Second // far past the grace: only closing the connection ends the attempt
	h := startRelay(t, []relay.Route{route(t, "fashn", "fashn", "app")}, tg)
	h.post("/hooks/fashn", []byte(fashnDone))
	eventually(t, "delivery in flight", func() bool { return len(rec.got()) == 1 })
	stopped := make(chan struct{})
	go func() { h.stop(); close(stopped) }() // grace is 2 s; the target never answers
	select {
	case <-stopped:
	case <-time.After(30 * time.Second): // a liveness bound, not a speed claim
		t.Fatal("shutdown still waits for the target 28 s after its grace ended")
	}
	if n := len(rec.got()); n != 1 {
		t.Errorf("the target got %d requests, want 1: a request cut short is not sent again", n)
	}
	if n := int(sample(t, h.relay, "hookrelay_delivery_attempts_total", "outcome", "delivered")) + int(sample(t, h.relay, "hookrelay_delivery_attempts_total", "outcome", "dead_letter")); n != 0 {
		t.Fatalf("%d deliveries finished, want none", n)
	}
	// Given back, due now, for the next start.
	claimed, err := h.store.Claim(context.Background(), "app", time.Now(), time.Minute, 10)
	if err != nil || len(claimed) != 1 {
		t.Fatalf("after shutdown the delivery is not claimable: %d, %v", len(claimed), err)
	}
}

func TestPayloadWithoutJobID(t *testing.T) {
	rec := newRecorder(t, nil)
	strict := route(t, "strict", "fashn", "app")
	strict.RequireJobID = true
	h := startRelay(t, []relay.Route{route(t, "fashn", "fashn", "app"), strict}, rec.target("app"))
	body := []byte(`{"status":"completed"}`)
	for range 2 {
		if a := h.post("/hooks/fashn", body); a.status != http.StatusAccepted {
			t.Fatalf("status %d, want 202", a.status)
		}
	}
	if a := h.post("/hooks/strict", body); a.status != http.StatusBadRequest || !strings.Contains(a.body["error"].(string), "job ID") {
		t.Fatalf("strict route: %d %v, want 400 naming the job ID", a.status, a.body)
	}
	eventually(t, "both delivered (no dedupe without an ID)", func() bool { return len(rec.got()) == 2 })
	if n := int(sample(t, h.relay, "hookrelay_webhooks_without_job_id_total")); n != 2 {
		t.Errorf("missing job ID counted %d times, want 2", n)
	}
	if v := rec.got()[0].header.Get("X-Relay-Job-Id"); v != "" {
		t.Errorf("X-Relay-Job-Id = %q, want none", v)
	}
}

func TestRejections(t *testing.T) {
	rec := newRecorder(t, nil)
	h := startRelay(t, []relay.Route{route(t, "fashn", "fashn", "app")}, rec.target("app"))
	big := `{"id":"x","status":"completed","pad":"` + strings.Repeat("a", 64<<10) + `"}`
	for _, tc := range []struct {
		name, method, path, body string
		chunked                  bool
		status                   int
		errContains              string
	}{
		{"malformed JSON", "POST", "/hooks/fashn", `{"id": "x",`, false, 400, "JSON"},
		{"top-level array", "POST", "/hooks/fashn", `[1,2]`, false, 400, ""},
		{"over the limit", "POST", "/hooks/fashn", big, false, 413, "limit"},
		{"over the limit, chunked", "POST", "/hooks/fashn", big, true, 413, "limit"},
		{"unknown route", "POST", "/hooks/nope", fashnDone, false, 404, "route"},
		{"wrong method", "GET", "/hooks/fashn", "", false, 405, "POST"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var body io.Reader = strings.NewReader(tc.body)
			if tc.chunked {
				body = io.MultiReader(body) // hides the length: sent chunked
			}
			req, _ := http.NewRequest(tc.method, h.url+tc.path, body)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var msg map[string]string
			if err := json.NewDecoder(resp.Body).Decode(&msg); err != nil {
				t.Fatalf("answer is not JSON: %v", err)
			}
			if resp.StatusCode != tc.status || !strings.Contains(msg["error"], tc.errContains) {
				t.Fatalf("got %d %q, want %d containing %q", resp.StatusCode, msg["error"], tc.status, tc.errContains)
			}
			if tc.status == 405 && resp.Header.Get("Allow") != "POST" {
				t.Errorf("Allow = %q", resp.Header.Get("Allow"))
			}
		})
	}
	// Rejected before the store: nothing is queued (an enqueued one would be queued still, or
	// recorded by the target already), and no dead letter.
	drained(t, h.store, "app")
	if n := len(rec.got()); n != 0 {
		t.Fatalf("rejected webhooks reached the target %d times", n)
	}
	if dead, err := h.store.ListDead(context.Background(), relay.DeadFilter{}); err != nil || len(dead) != 0 {
		t.Fatalf("dead letters after rejected webhooks: %d %v", len(dead), err)
	}
}

func TestStoreUnavailableIs503(t *testing.T) {
	rec := newRecorder(t, nil)
	h := startRelay(t, []relay.Route{route(t, "fashn", "fashn", "app")}, rec.target("app"))
	if err := h.relay.Ready(context.Background()); err != nil {
		t.Fatalf("not ready with an open store: %v", err)
	}
	if err := h.store.Close(); err != nil {
		t.Fatal(err)
	}
	if err := h.relay.Ready(context.Background()); err == nil {
		t.Fatal("ready with a closed store")
	}
	a := h.post("/hooks/fashn", []byte(fashnDone))
	if a.status != http.StatusServiceUnavailable || a.header.Get("Retry-After") == "" {
		t.Fatalf("got %d (Retry-After %q), want 503 with Retry-After", a.status, a.header.Get("Retry-After"))
	}
	if strings.Contains(a.body["error"].(string), "bolt") || strings.Contains(a.body["error"].(string), "closed") {
		t.Errorf("the sender is told internals: %q", a.body["error"])
	}
}

func TestTargetSigning(t *testing.T) {
	rec := newRecorder(t, nil)
	key, _ := relay.ParseSigningSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	tg := rec.target("app")
	tg.SigningKey = key
	h := startRelay(t, []relay.Route{route(t, "fashn", "fashn", "app")}, tg)
	res := h.post("/hooks/fashn", []byte(fashnDone))
	eventually(t, "delivery", func() bool { return len(rec.got()) == 1 })
	r := rec.got()[0]
	ts, err := strconv.ParseInt(r.header.Get("Webhook-Timestamp"), 10, 64)
	if err != nil || time.Since(time.Unix(ts, 0)).Abs() > time.Minute {
		t.Fatalf("webhook-timestamp %q", r.header.Get("Webhook-Timestamp"))
	}
	if r.header.Get("Webhook-Id") != relay.DeliveryID(res.body["id"].(string), "app") {
		t.Errorf("webhook-id %q, want the delivery id", r.header.Get("Webhook-Id"))
	}
	if !relay.VerifyStandardWebhook(key, r.header.Get("Webhook-Id"), ts, r.body, r.header.Get("Webhook-Signature")) {
		t.Fatalf("signature %q does not verify", r.header.Get("Webhook-Signature"))
	}
}

// Each seed document's example payloads go in and come out at the target exactly once.
func TestSeedPayloadsDeliveredOnce(t *testing.T) {
	var files []string
	for _, p := range []string{"fashn", "fal", "fotor", "abstrakt"} {
		more, _ := filepath.Glob("../filters/testdata/" + p + "_*.json")
		files = append(files, more...)
	}
	if len(files) < 7 {
		t.Fatalf("seed payloads: %v", files)
	}
	rec := newRecorder(t, nil)
	var routes []relay.Route
	for _, p := range []string{"fashn", "fal", "fotor", "abstrakt"} {
		routes = append(routes, route(t, p, p, "app"))
	}
	h := startRelay(t, routes, rec.target("app"))
	sent := map[string]bool{}
	for _, f := range files {
		provider, _, _ := strings.Cut(filepath.Base(f), "_")
		body, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 2 { // the second is a provider's duplicate
			a := h.post("/hooks/"+provider, body)
			if wantDup := i == 1; a.status >= 300 || (a.body["duplicate"] == true) != wantDup {
				t.Fatalf("%s, post %d: %d %v", f, i+1, a.status, a.body)
			}
		}
		sent[string(body)] = true
	}
	eventually(t, "all delivered", func() bool { return len(rec.got()) == len(sent) })
	drained(t, h.store, "app")
	for _, r := range rec.got() {
		if !sent[string(r.body)] {
			t.Errorf("unexpected or repeated delivery %s", r.body)
		}
		delete(sent, string(r.body))
	}
	if len(sent) != 0 {
		t.Errorf("%d payloads not delivered", len(sent))
	}
}

// sweepCounter is the real store, with the results of Sweep recorded.
type sweepCounter struct {
	*boltstore.Store
	mu    sync.Mutex
	swept int
	calls int // sweeps finished
}

func (s *sweepCounter) Sweep(ctx context.Context, now time.Time) (int, error) {
	n, err := s.Store.Sweep(ctx, now)
	s.mu.Lock()
	s.swept += n
	s.calls++
	s.mu.Unlock()
	return n, err
}

func TestExpiredDedupeKeysAreSweptInTheBackground(t *testing.T) {
	rec := newRecorder(t, nil)
	store := &sweepCounter{Store: openStore(t, filepath.Join(t.TempDir(), "relay.db"))}
	defer store.Close()
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	rt := route(t, "fashn", "fashn", "app")
	rt.DedupeTTL = time.Hour
	r, err := relay.New(relay.Config{Routes: []relay.Route{rt}, Targets: []relay.Target{rec.target("app")},
		Store: store, Now: clock, SweepInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	stop := r.StartWorkers()
	defer stop(context.Background())
	srv := httptest.NewServer(r.Handler())
	defer srv.Close()
	for _, body := range []string{`{"id":"a","status":"completed"}`, `{"id":"b","status":"completed"}`} {
		resp, err := http.Post(srv.URL+"/hooks/fashn", "application/json", strings.NewReader(body))
		if err != nil || resp.StatusCode != http.StatusAccepted {
			t.Fatalf("post: %v %v", resp, err)
		}
		resp.Body.Close()
	}
	// Sweeps that began after the keys were stored, with the clock before their expiry.
	store.mu.Lock()
	after := store.calls
	store.mu.Unlock()
	eventually(t, "two more sweeps", func() bool { store.mu.Lock(); defer store.mu.Unlock(); return store.calls >= after+2 })
	store.mu.Lock()
	early := store.swept
	store.mu.Unlock()
	if early != 0 {
		t.Fatalf("swept %d keys before they expired", early)
	}
	mu.Lock()
	now = now.Add(time.Hour + time.Second)
	mu.Unlock()
	eventually(t, "both keys swept", func() bool { store.mu.Lock(); defer store.mu.Unlock(); return store.swept == 2 })
}

func TestConcurrencyCapAndRate(t *testing.T) {
	var mu sync.Mutex
	inFlight, peak := 0, 0
	rec := newRecorder(t, func(int, *http.Request, http.ResponseWriter) {
		mu.Lock()
		inFlight++
		peak = max(peak, inFlight)
		mu.Unlock()
		time.Sleep(30 * time.Millisecond)
		mu.Lock()
		inFlight--
		mu.Unlock()
	})
	slow := rec.target("slow")
	slow.Concurrency = 2
	rated := newRecorder(t, nil)
	limited := rated.target("limited")
	limited.RateLimit, limited.RateBurst = 20, 1 // one every 50 ms
	h := startRelay(t, []relay.Route{route(t, "fashn", "fashn", "slow", "limited")}, slow, limited)
	const n = 10
	for i := range n {
		if a := h.post("/hooks/fashn", []byte(`{"id":"job-`+strconv.Itoa(i)+`","status":"completed"}`)); a.status != http.StatusAccepted {
			t.Fatalf("post %d: %d", i, a.status)
		}
	}
	eventually(t, "all delivered", func() bool { return len(rec.got()) == n && len(rated.got()) == n })
	mu.Lock()
	defer mu.Unlock()
	if peak != 2 {
		t.Errorf("peak deliveries in flight = %d, want the cap of 2", peak)
	}
	got := rated.got()
	if span := got[n-1].at.Sub(got[0].at); span < (n-1)*50*time.Millisecond-20*time.Millisecond {
		t.Errorf("%d deliveries at 20/s took %v, want at least %v", n, span, (n-1)*50*time.Millisecond)
	}
}
