package relay_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookrelay/hookrelay/filters"
	"github.com/hookrelay/hookrelay/relay"
	"github.com/hookrelay/hookrelay/relay/boltstore"
)

// countingStore is the real store with its enqueues counted, to show that refused webhooks never
// reach it.
type countingStore struct {
	*boltstore.Store
	enqueues atomic.Int64
}

func (s *countingStore) EnqueueLeased(ctx context.Context, m *relay.Message, key string, ttl, lease time.Duration,
	leased []string) (bool, []*relay.Delivery, error) {
	s.enqueues.Add(1)
	return s.Store.EnqueueLeased(ctx, m, key, ttl, lease, leased)
}

// syncBuffer collects log output from concurrent handlers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type edge struct {
	url   string
	store *countingStore
	logs  *syncBuffer
	rec   *recorder
}

func startEdge(t *testing.T, clients relay.ClientResolver, routes ...relay.Route) *edge {
	t.Helper()
	rec := newRecorder(t, nil)
	store := &countingStore{Store: openStore(t, filepath.Join(t.TempDir(), "relay.db"))}
	logs := &syncBuffer{}
	t.Cleanup(func() { store.Close() })
	_, url, _ := serve(t, relay.Config{Routes: routes, Targets: []relay.Target{rec.target("app")}, Store: store,
		Clients: clients, PollInterval: 50 * time.Millisecond,
		Logger: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	return &edge{url: url, store: store, logs: logs, rec: rec}
}

func (e *edge) do(t *testing.T, path string, body string, hdr map[string]string) (int, http.Header, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, e.url+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("answer %d is not JSON: %q", resp.StatusCode, b)
	}
	return resp.StatusCode, resp.Header, string(b)
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func TestRefusedBeforeTheBodyIsRead(t *testing.T) {
	rt := route(t, "fotor", "fotor", "app")
	rt.Guards = []relay.Guard{must[*filters.Allowlist](t)(filters.NewAllowlist(rt.Extractor.(*filters.Preset).SourceAddrs()))}
	e := startEdge(t, nil, rt)

	// The body never comes: an answer proves the relay did not wait for it.
	pr, pw := io.Pipe()
	defer pw.Close()
	req, _ := http.NewRequest(http.MethodPost, e.url+"/hooks/fotor", pr)
	req.ContentLength = 100
	type result struct {
		status int
		err    error
	}
	got := make(chan result, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			got <- result{err: err}
			return
		}
		resp.Body.Close()
		got <- result{status: resp.StatusCode}
	}()
	select {
	case r := <-got:
		if r.err != nil || r.status != http.StatusForbidden {
			t.Fatalf("got %d %v, want 403", r.status, r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the relay waited for the body of a sender it does not allow")
	}
	if n := e.store.enqueues.Load(); n != 0 {
		t.Fatalf("a refused webhook reached the store (%d enqueues)", n)
	}
}

func TestRateLimitedWithRetryAfter(t *testing.T) {
	rt := route(t, "fashn", "fashn", "app")
	rt.Guards = []relay.Guard{must[*filters.RateLimiter](t)(filters.NewRateLimiter(filters.RateConfig{PerIP: 0.5, PerIPBurst: 2}))}
	e := startEdge(t, nil, rt)
	for i, want := range []int{202, 202, 429, 429} {
		status, hdr, body := e.do(t, "/hooks/fashn", `{"id":"j`+string(rune('0'+i))+`","status":"completed"}`, nil)
		if status != want {
			t.Fatalf("request %d: %d %s, want %d", i+1, status, body, want)
		}
		if status == 429 && (hdr.Get("Retry-After") == "" || hdr.Get("Retry-After") == "0") {
			t.Errorf("429 without a useful Retry-After: %q", hdr.Get("Retry-After"))
		}
	}
	if n := e.store.enqueues.Load(); n != 2 {
		t.Fatalf("enqueues %d, want only the 2 admitted", n)
	}
}

func TestSignatureVerification(t *testing.T) {
	const secret = "It's a Secret to Everybody"
	rt := route(t, "gh", "fashn", "app")
	rt.Provider = "generic"
	rt.Extractor = must[*filters.Preset](t)(filters.NewPreset("generic", &filters.Generic{JobIDPath: "id"}))
	rt.Verifier = must[*filters.GitHub](t)(filters.NewGitHub([]string{"old-secret-being-rotated-out", secret}))
	e := startEdge(t, nil, rt)
	body := `{"id":"job-1"}`
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(body))
	good := "sha256=" + hex.EncodeToString(mac.Sum(nil))

	for _, tc := range []struct {
		name, body, sig string
		status          int
		logs            string
	}{
		{"good, second secret", body, good, 202, ""},
		{"tampered body", `{"id":"job-2"}`, good, 401, "X-Hub-Signature-256"},
		{"missing header", body, "", 401, "X-Hub-Signature-256"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hdr := map[string]string{}
			if tc.sig != "" {
				hdr["X-Hub-Signature-256"] = tc.sig
			}
			status, _, answer := e.do(t, "/hooks/gh", tc.body, hdr)
			if status != tc.status {
				t.Fatalf("%d %s, want %d", status, answer, tc.status)
			}
			if status == 401 && !strings.Contains(answer, "webhook authentication failed") {
				t.Errorf("401 body %s, want the generic message", answer)
			}
			if status == 401 && strings.Contains(answer, "sha256") {
				t.Errorf("401 body %s tells the sender about the scheme", answer)
			}
		})
	}
	// The log says exactly why; the secret and the expected signature never appear.
	logs := e.logs.String()
	if !strings.Contains(logs, `"status":401`) || strings.Contains(logs, secret) || strings.Contains(logs, good[7:]) {
		t.Fatalf("logs: %s", logs)
	}
	if n := e.store.enqueues.Load(); n != 1 {
		t.Fatalf("enqueues %d, want 1", n)
	}
}

func TestURLTokenInPathIsNeverLogged(t *testing.T) {
	const token = "tok-5f1c0a9e8b7d6c5f4e3d2c1b0a9f8e7d"
	rt := route(t, "fashn", "fashn", "app")
	rt.Verifier = must[*filters.URLToken](t)(filters.NewURLToken([]string{token}, ""))
	rt.TokenInPath = true
	e := startEdge(t, nil, rt)
	body := `{"id":"j1","status":"completed"}`
	for _, tc := range []struct {
		path   string
		status int
	}{
		{"/hooks/fashn/" + token, 202},
		{"/hooks/fashn/" + token[:len(token)-1] + "x", 401},
		{"/hooks/fashn", 401},
		{"/hooks/fashn/" + token + "/extra", 404},
	} {
		if status, _, answer := e.do(t, tc.path, body, nil); status != tc.status {
			t.Errorf("%s: %d %s, want %d", tc.path, status, answer, tc.status)
		}
	}
	eventually(t, "delivery", func() bool { return len(e.rec.got()) == 1 })
	if logs := e.logs.String(); strings.Contains(logs, token[4:20]) || !strings.Contains(logs, "/hooks/fashn/<token>") {
		t.Fatalf("the path token leaks into the logs, or the path is not logged:\n%s", logs)
	}
}

func TestTrustedProxies(t *testing.T) {
	allow := must[*filters.Allowlist](t)(filters.NewAllowlist([]string{"203.0.113.7"}))
	spoofed := map[string]string{"X-Forwarded-For": "203.0.113.7"}
	body := `{"id":"j1","status":"completed"}`

	// The test client connects from 127.0.0.1: without trusting it, the header is a spoof.
	rt := route(t, "fashn", "fashn", "app")
	rt.Guards = []relay.Guard{allow}
	e := startEdge(t, must[*filters.ClientIP](t)(filters.NewClientIPHeader(nil, "")), rt)
	if status, _, _ := e.do(t, "/hooks/fashn", body, spoofed); status != http.StatusForbidden {
		t.Fatalf("spoofed X-Forwarded-For from an untrusted peer: %d, want 403", status)
	}

	e = startEdge(t, must[*filters.ClientIP](t)(filters.NewClientIPHeader([]string{"127.0.0.0/8"}, "")), rt)
	if status, _, answer := e.do(t, "/hooks/fashn", body, map[string]string{"X-Forwarded-For": "198.51.100.1, 203.0.113.7"}); status != http.StatusAccepted {
		t.Fatalf("through a trusted proxy: %d %s, want 202", status, answer)
	}
	eventually(t, "delivery", func() bool { return len(e.rec.got()) == 1 })
	if xff := e.rec.got()[0].header.Get("X-Forwarded-For"); xff != "203.0.113.7" {
		t.Fatalf("target's X-Forwarded-For = %q, want the resolved sender 203.0.113.7", xff)
	}
}

// fal's signature through the real server, with the fixed key of filters/testdata/jwks_fal.json.
func TestFalSignature(t *testing.T) {
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{0x42}, ed25519.SeedSize))
	rt := route(t, "fal", "fal", "app")
	rt.Verifier = must[*filters.Fal](t)(filters.NewFal(filters.FalConfig{JWKSFile: "../filters/testdata/jwks_fal.json"}))
	e := startEdge(t, nil, rt)
	body, err := os.ReadFile("../filters/testdata/fal_ok.json")
	if err != nil {
		t.Fatal(err)
	}
	sign := func(body []byte, ts int64) map[string]string {
		sum := sha256.Sum256(body)
		tsText := strconv.FormatInt(ts, 10)
		msg := "024ca5b1-45d3-4afd-883e-ad3abe2a1c4d\nuser-1\n" + tsText + "\n" + hex.EncodeToString(sum[:])
		return map[string]string{
			"X-Fal-Webhook-Request-Id": "024ca5b1-45d3-4afd-883e-ad3abe2a1c4d",
			"X-Fal-Webhook-User-Id":    "user-1",
			"X-Fal-Webhook-Timestamp":  tsText,
			"X-Fal-Webhook-Signature":  hex.EncodeToString(ed25519.Sign(key, []byte(msg))),
		}
	}
	now := time.Now().Unix()
	if status, _, answer := e.do(t, "/hooks/fal", string(body), sign(body, now-10*60)); status != http.StatusUnauthorized {
		t.Fatalf("stale signature: %d %s, want 401", status, answer)
	}
	tampered := bytes.Replace(body, []byte(`"OK"`), []byte(`"ERROR"`), 1)
	if status, _, answer := e.do(t, "/hooks/fal", string(tampered), sign(body, now)); status != http.StatusUnauthorized {
		t.Fatalf("tampered body: %d %s, want 401", status, answer)
	}
	if status, _, answer := e.do(t, "/hooks/fal", string(body), sign(body, now)); status != http.StatusAccepted {
		t.Fatalf("signed by fal's key: %d %s, want 202", status, answer)
	}
	eventually(t, "delivery", func() bool { return len(e.rec.got()) == 1 })
	if got := e.rec.got()[0]; string(got.body) != string(body) || got.header.Get("X-Relay-Job-Status") != "succeeded" {
		t.Fatalf("target got %q with status %q", got.body, got.header.Get("X-Relay-Job-Status"))
	}
}
