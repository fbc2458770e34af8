package relay_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookrelay/hookrelay/relay"
	"github.com/hookrelay/hookrelay/relay/tlsedge/acmetest"
)

const secretValue = "Bearer s3cr3t-t0ken-never-printed"

// baseTarget is a valid target to vary.
func baseTarget(url string) relay.Target {
	return relay.Target{Name: "app", URL: url, Timeout: 5 * time.Second, Concurrency: 2,
		Retry: relay.RetryPolicy{Initial: 10 * time.Millisecond, Multiplier: 2, Max: 50 * time.Millisecond,
			MaxAttempts: 10000, MaxAge: time.Hour, MaxRetryAfter: time.Second}}
}

func TestCheckTargetNamesTheField(t *testing.T) {
	dir := t.TempDir()
	ca := acmetest.NewPrivateCA(t, "test root")
	caFile := filepath.Join(dir, "ca.pem")
	certPEM, keyPEM := ca.Issue(t, true, "relay")
	certFile, keyFile := filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key")
	garbage := filepath.Join(dir, "garbage.pem")
	for f, b := range map[string][]byte{caFile: ca.PEM, certFile: certPEM, keyFile: keyPEM, garbage: []byte("not pem\n")} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	_, otherKey := ca.Issue(t, true, "other")
	otherKeyFile := filepath.Join(dir, "other.key")
	if err := os.WriteFile(otherKeyFile, otherKey, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		change func(*relay.Target)
		field  string // "" for a valid target
		want   string
	}{
		{"plain https", func(*relay.Target) {}, "", ""},
		{"unix socket", func(x *relay.Target) { x.URL = "unix:///run/app.sock:/hooks?x=1" }, "", ""},
		{"unix socket without path", func(x *relay.Target) { x.URL = "unix:///run/app.sock" }, "", ""},
		{"unix socket relative", func(x *relay.Target) { x.URL = "unix://run/app.sock:/h" }, "url", "absolute socket path"},
		{"unix socket bad path", func(x *relay.Target) { x.URL = "unix:///run/app.sock:hooks" }, "url", "must start with /"},
		{"ftp", func(x *relay.Target) { x.URL = "ftp://x/y" }, "url", "not an absolute http"},
		{"header", func(x *relay.Target) { x.Headers = []relay.Header{{"Authorization", secretValue}} }, "", ""},
		{"hop-by-hop header", func(x *relay.Target) { x.Headers = []relay.Header{{"connection", "close"}} }, "headers[0].name", "hop-by-hop"},
		{"host header", func(x *relay.Target) { x.Headers = []relay.Header{{"X-A", "1"}, {"Host", "x"}} }, "headers[1].name", "set by the relay"},
		{"content-length", func(x *relay.Target) { x.Headers = []relay.Header{{"Content-Length", "1"}} }, "headers[0].name", "set by the relay"},
		{"x-relay-", func(x *relay.Target) { x.Headers = []relay.Header{{"X-Relay-Route", "x"}} }, "headers[0].name", "set by the relay"},
		{"webhook- without signing", func(x *relay.Target) { x.Headers = []relay.Header{{"Webhook-Id", "x"}} }, "", ""},
		{"webhook- when signing", func(x *relay.Target) {
			x.SigningKey = []byte("k")
			x.Headers = []relay.Header{{"webhook-signature", "x"}}
		}, "headers[0].name", "when it signs"},
		{"bad header name", func(x *relay.Target) { x.Headers = []relay.Header{{"X Bad", "1"}} }, "headers[0].name", "not a valid header name"},
		{"header twice", func(x *relay.Target) { x.Headers = []relay.Header{{"X-Key", "1"}, {"x-key", "2"}} }, "headers[1].name", "set twice"},
		{"header value with newline", func(x *relay.Target) { x.Headers = []relay.Header{{"X-Key", "a\nb"}} }, "headers[0]", "control character"},
		{"tls", func(x *relay.Target) {
			x.TLS = &relay.TargetTLS{CAFile: caFile, CAOnly: true, CertFile: certFile, KeyFile: keyFile, MinVersion: tls.VersionTLS13}
		}, "", ""},
		{"tls on http", func(x *relay.Target) { x.URL = "http://x/"; x.TLS = &relay.TargetTLS{} }, "tls", "not https"},
		{"tls on a socket", func(x *relay.Target) { x.URL = "unix:///s:/"; x.TLS = &relay.TargetTLS{} }, "tls", "unix socket"},
		{"unreadable CA", func(x *relay.Target) { x.TLS = &relay.TargetTLS{CAFile: filepath.Join(dir, "none.pem")} }, "tls.ca_file", "no such file"},
		{"CA not PEM", func(x *relay.Target) { x.TLS = &relay.TargetTLS{CAFile: garbage} }, "tls.ca_file", "no PEM certificate"},
		{"cert without key", func(x *relay.Target) { x.TLS = &relay.TargetTLS{CertFile: certFile} }, "tls.key_file", "without key_file"},
		{"key without cert", func(x *relay.Target) { x.TLS = &relay.TargetTLS{KeyFile: keyFile} }, "tls.cert_file", "without cert_file"},
		{"key of another cert", func(x *relay.Target) { x.TLS = &relay.TargetTLS{CertFile: certFile, KeyFile: otherKeyFile} }, "tls.key_file", "do not load"},
		{"ca_only without ca", func(x *relay.Target) { x.TLS = &relay.TargetTLS{CAOnly: true} }, "tls.ca_only", "without ca_file"},
		{"tls 1.1", func(x *relay.Target) { x.TLS = &relay.TargetTLS{MinVersion: tls.VersionTLS11} }, "tls.min_version", "1.2 or 1.3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			target := baseTarget("https://app.internal/hooks")
			tc.change(&target)
			err := relay.CheckTarget(target, time.Minute)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("valid target refused: %v", err)
				}
				return
			}
			fe, ok := errors.AsType[*relay.FieldError](err)
			if !ok || fe.Field != tc.field || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want field %s with %q", err, tc.field, tc.want)
			}
			if strings.Contains(err.Error(), secretValue) {
				t.Fatalf("the error shows a header value: %v", err)
			}
		})
	}
}

// A target's static header values never print, however the target is formatted.
func TestHeaderValuesDoNotPrint(t *testing.T) {
	target := baseTarget("http://x/")
	target.Headers = []relay.Header{{"Authorization", secretValue}}
	for _, s := range []string{fmt.Sprint(target), fmt.Sprintf("%+v", target), fmt.Sprintf("%v", target.Headers)} {
		if strings.Contains(s, "s3cr3t") || !strings.Contains(s, "Authorization") {
			t.Fatalf("formatted target: %s", s)
		}
	}
}

// A unix socket target gets its deliveries on the socket, at the path after the socket, with
// its static headers.
func TestUnixSocketTargetWithHeaders(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "app.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *http.Request, 1)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		got <- r
	}))
	srv.Listener = ln
	srv.Start()
	defer srv.Close()

	target := baseTarget("unix://" + sock + ":/hooks/in?src=relay")
	target.Headers = []relay.Header{{"Authorization", secretValue}, {"x-api-key", "k1"}}
	h := startRelay(t, []relay.Route{route(t, "fashn", "fashn", "app")}, target)
	if a := h.post("/hooks/fashn", []byte(fashnDone)); a.status != http.StatusAccepted {
		t.Fatalf("post: %d %v", a.status, a.body)
	}
	select {
	case r := <-got:
		if r.URL.RequestURI() != "/hooks/in?src=relay" || r.Header.Get("Authorization") != secretValue ||
			r.Header.Get("X-Api-Key") != "k1" || r.Header.Get("X-Relay-Job-Status") != "succeeded" {
			t.Fatalf("delivery: %s %v", r.URL.RequestURI(), r.Header)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no delivery on the socket")
	}
}

// A target behind TLS with a private CA that requires a client certificate gets its deliveries
// from a relay with the certificate, refuses one without, and a rotated client certificate is
// picked up without a reload.
func TestMutualTLSTargetAndRotation(t *testing.T) {
	dir := t.TempDir()
	ca := acmetest.NewPrivateCA(t, "internal root")
	srvCert, srvKey := ca.Issue(t, false, "127.0.0.1")
	pair, err := tls.X509KeyPair(srvCert, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	var wantClient atomic.Value // the client certificate's common name the service accepts
	wantClient.Store("relay-1")
	var mu sync.Mutex
	byClient := map[string]int{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		cn := r.TLS.PeerCertificates[0].Subject.CommonName
		mu.Lock()
		byClient[cn]++
		mu.Unlock()
		if cn != wantClient.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes are expected
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, ClientCAs: ca.Pool(), ClientAuth: tls.RequireAndVerifyClientCert}
	srv.StartTLS()
	defer srv.Close()
	count := func(cn string) int { mu.Lock(); defer mu.Unlock(); return byClient[cn] }

	caFile, certFile, keyFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "relay.crt"), filepath.Join(dir, "relay.key")
	writeFile := func(path string, b []byte, mod time.Time) {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(path, mod, mod); err != nil {
			t.Fatal(err)
		}
	}
	c1, k1 := ca.Issue(t, true, "relay-1")
	then := time.Now().Add(-time.Hour)
	writeFile(caFile, ca.PEM, then)
	writeFile(certFile, c1, then)
	writeFile(keyFile, k1, then)

	withCert := baseTarget(srv.URL + "/in")
	withCert.TLS = &relay.TargetTLS{CAFile: caFile, CAOnly: true, CertFile: certFile, KeyFile: keyFile}
	withoutCert := baseTarget(srv.URL + "/in")
	withoutCert.Name = "nocert"
	withoutCert.TLS = &relay.TargetTLS{CAFile: caFile, CAOnly: true}
	shared := baseTarget(srv.URL + "/in") // the system roots only: the private CA is not trusted
	shared.Name = "shared"
	h := startRelay(t, []relay.Route{route(t, "fashn", "fashn", "app", "nocert", "shared")}, withCert, withoutCert, shared)

	if a := h.post("/hooks/fashn", []byte(`{"id":"j1","status":"completed"}`)); a.status != http.StatusAccepted {
		t.Fatalf("post: %d", a.status)
	}
	eventually(t, "the delivery with the client certificate", func() bool { return count("relay-1") == 1 })
	// The others are retried: wait until each has failed twice, then check none reached the service.
	eventually(t, "failed attempts without the certificate", func() bool {
		return sample(t, h.relay, "hookrelay_delivery_attempts_total", "target", "nocert", "outcome", "retry") >= 2 &&
			sample(t, h.relay, "hookrelay_delivery_attempts_total", "target", "shared", "outcome", "retry") >= 2
	})
	mu.Lock()
	if len(byClient) != 1 {
		t.Fatalf("requests reached the service from %v; only relay-1 presents a certificate", byClient)
	}
	mu.Unlock()

	// Rotate: the service now wants relay-2, and the files hold it.
	wantClient.Store("relay-2")
	c2, k2 := ca.Issue(t, true, "relay-2")
	writeFile(certFile, c2, then.Add(time.Minute))
	writeFile(keyFile, k2, then.Add(time.Minute))
	if a := h.post("/hooks/fashn", []byte(`{"id":"j2","status":"completed"}`)); a.status != http.StatusAccepted {
		t.Fatalf("post: %d", a.status)
	}
	eventually(t, "the delivery with the rotated certificate", func() bool { return count("relay-2") == 1 })
}

// WithDefaults fills only zero durations; New (and so Validate) refuses a negative one.
func TestConfigDurations(t *testing.T) {
	c := relay.Config{Lease: 5 * time.Minute}.WithDefaults()
	if c.Lease != 5*time.Minute || c.PollInterval != time.Second || c.IdleTimeout != 2*time.Minute {
		t.Errorf("WithDefaults: lease %v, poll %v, idle %v; want 5m, 1s, 2m", c.Lease, c.PollInterval, c.IdleTimeout)
	}
	if err := relay.Validate(relay.Config{ShutdownGrace: -time.Second}); err == nil || err.Error() != "relay: ShutdownGrace -1s is negative" {
		t.Errorf("a negative duration: %v", err)
	}
}

// Route.WithDefaults fills only zero fields, the answer status from the preset; New applies it,
// and CheckRoute names each field it refuses.
func TestRouteDefaults(t *testing.T) {
	for provider, ack := range map[string]int{"fotor": http.StatusOK, "fashn": http.StatusAccepted} {
		rt := route(t, "r", provider, "app")
		rt.MaxBody, rt.DedupeTTL, rt.AckStatus = 0, 0, 0
		if got := rt.WithDefaults(); got.MaxBody != 1<<20 || got.DedupeTTL != 72*time.Hour || got.AckStatus != ack {
			t.Errorf("%s: max body %d, dedupe TTL %v, ack %d; want 1MiB, 72h, %d", provider, got.MaxBody, got.DedupeTTL, got.AckStatus, ack)
		}
		if err := relay.Validate(relay.Config{Routes: []relay.Route{rt}, Targets: []relay.Target{{Name: "app", URL: "http://127.0.0.1:1/"}}}); err != nil {
			t.Errorf("%s: a route without max body, dedupe TTL and ack status: %v", provider, err)
		}
	}
	if got := (relay.Route{MaxBody: 10, DedupeTTL: time.Minute, AckStatus: 200}).WithDefaults(); got.MaxBody != 10 ||
		got.DedupeTTL != time.Minute || got.AckStatus != 200 {
		t.Errorf("WithDefaults changed set fields: %+v", got)
	}
	err := relay.CheckRoute(relay.Route{ForwardHeaders: []string{"Connection"}, DedupeTTL: -time.Second, AckStatus: 201})
	want := `forward_headers[0]: Connection is a hop-by-hop header; it describes a connection, not a webhook
dedupe_ttl: must be positive, got -1s
ack_status: 201 must be 200 or 202`
	if err == nil || err.Error() != want {
		t.Errorf("CheckRoute:\n%v\nwant\n%s", err, want)
	}
}

// Target.WithDefaults fills only zero fields; New applies it, so a target may leave them out.
func TestTargetDefaults(t *testing.T) {
	got := relay.Target{Concurrency: 3, Retry: relay.RetryPolicy{MaxAttempts: 5}}.WithDefaults()
	want := relay.DefaultRetryPolicy()
	want.MaxAttempts = 5
	if got.Timeout != 30*time.Second || got.Concurrency != 3 || got.Retry != want {
		t.Errorf("WithDefaults = timeout %v, concurrency %d, retry %+v; want 30s, 3, %+v", got.Timeout, got.Concurrency, got.Retry, want)
	}
	if err := relay.Validate(relay.Config{Targets: []relay.Target{{Name: "app", URL: "http://127.0.0.1:1/"}}}); err != nil {
		t.Errorf("a target with only a name and a URL: %v", err)
	}
}

// A target that closes each keep-alive connection after its first answer, without saying so, as
// a server whose idle timeout fires between two deliveries does: the next delivery, sent on the
// closed connection, is sent again on a new one instead of failing its attempt.
func TestTargetClosedKeepAliveIsNotAFailure(t *testing.T) {
	var served, closed atomic.Int32
	addr := rawTarget(t, func(c net.Conn) {
		defer func() { c.Close(); closed.Add(1) }()
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			return
		}
		io.Copy(io.Discard, req.Body)
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		served.Add(1)
	})
	h := startRelay(t, []relay.Route{route(t, "fashn", "fashn", "app")}, baseTarget("http://"+addr+"/hook"))
	for i := range 3 {
		h.post("/hooks/fashn", []byte(fashnBody(i)))
		eventually(t, "delivery", func() bool {
			return int(sample(t, h.relay, "hookrelay_delivery_attempts_total", "outcome", "delivered")) == i+1
		})
		// The target has closed the connection before the next delivery, not while it goes out.
		eventually(t, "the target to close", func() bool { return int(closed.Load()) == i+1 })
	}
	if n := sample(t, h.relay, "hookrelay_delivery_attempts_total", "outcome", "retry"); n != 0 {
		t.Errorf("%v attempts failed on a connection the target had closed, want 0", n)
	}
	if n := served.Load(); n != 3 {
		t.Errorf("target answered %d requests, want 3", n)
	}
}

// An answer longer than what the relay reads (64 KiB), with a 60 KiB header, is still the
// target's answer: the delivery is acknowledged, and the next one goes out on a new connection.
func TestTargetLongAnswer(t *testing.T) {
	long := strings.Repeat("x", 200<<10)
	rec := newRecorder(t, func(_ int, _ *http.Request, w http.ResponseWriter) {
		w.Header().Set("X-Big", strings.Repeat("h", 60<<10))
		io.WriteString(w, long)
	})
	h := startRelay(t, []relay.Route{route(t, "fashn", "fashn", "app")}, rec.target("app"))
	for i := range 2 {
		h.post("/hooks/fashn", []byte(fashnBody(i)))
		eventually(t, "delivery", func() bool {
			return int(sample(t, h.relay, "hookrelay_delivery_attempts_total", "outcome", "delivered")) == i+1
		})
	}
	if n := sample(t, h.relay, "hookrelay_delivery_attempts_total", "outcome", "retry"); n != 0 {
		t.Errorf("%v attempts failed, want 0", n)
	}
}

// A target that does not answer within its timeout fails the attempt with an error that says so,
// and the connection it held is not reused.
func TestTargetTimeout(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	rec := newRecorder(t, func(n int, r *http.Request, _ http.ResponseWriter) {
		if n == 1 {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
	})
	tg := rec.target("app")
	tg.Timeout = 200 * time.Millisecond
	tg.Retry.MaxAttempts = 1
	h := startRelay(t, []relay.Route{route(t, "fashn", "fashn", "app")}, tg)
	h.post("/hooks/fashn", []byte(fashnBody(0)))
	var dead []*relay.Delivery
	eventually(t, "dead letter", func() bool {
		dead, _ = h.store.ListDead(context.Background(), relay.DeadFilter{})
		return len(dead) == 1
	})
	if want := "no answer within the timeout of 200ms"; !strings.Contains(dead[0].LastError, want) {
		t.Errorf("dead letter error %q, want it to say %q", dead[0].LastError, want)
	}
	// The next delivery gets an answer on a connection of its own.
	h.post("/hooks/fashn", []byte(fashnBody(1)))
	eventually(t, "second delivery", func() bool {
		return int(sample(t, h.relay, "hookrelay_delivery_attempts_total", "outcome", "delivered")) == 1
	})
}

// Answers without a body (204, 304) and with an empty one are answers like any other.
func TestTargetAnswersWithoutBody(t *testing.T) {
	for _, code := range []int{http.StatusNoContent, http.StatusNotModified, http.StatusOK} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			rec := newRecorder(t, func(_ int, _ *http.Request, w http.ResponseWriter) { w.WriteHeader(code) })
			tg := rec.target("app")
			tg.Retry.MaxAttempts = 1
			h := startRelay(t, []relay.Route{route(t, "fashn", "fashn", "app")}, tg)
			h.post("/hooks/fashn", []byte(fashnDone))
			outcome := "delivered"
			if code == http.StatusNotModified { // a 3xx is not a delivery (DELIVERY.md)
				outcome = "dead_letter"
			}
			eventually(t, outcome, func() bool {
				return int(sample(t, h.relay, "hookrelay_delivery_attempts_total", "outcome", outcome)) == 1
			})
		})
	}
}

// A target that read the request and then closed the connection without answering may have
// acted on it: the attempt fails and the request is not sent again within it.
func TestTargetClosingAfterReadingIsNotResent(t *testing.T) {
	var got atomic.Int32
	addr := rawTarget(t, func(c net.Conn) {
		defer c.Close()
		if req, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
			io.Copy(io.Discard, req.Body)
			got.Add(1)
		}
	})
	tg := baseTarget("http://" + addr + "/hook")
	tg.Retry.MaxAttempts = 1
	h := startRelay(t, []relay.Route{route(t, "fashn", "fashn", "app")}, tg)
	h.post("/hooks/fashn", []byte(fashnDone))
	var dead []*relay.Delivery
	eventually(t, "dead letter", func() bool {
		dead, _ = h.store.ListDead(context.Background(), relay.DeadFilter{})
		return len(dead) == 1
	})
	if n := got.Load(); n != 1 {
		t.Errorf("the target got the request %d times in one attempt, want 1", n)
	}
	if want := "closed the connection without answering"; !strings.Contains(dead[0].LastError, want) {
		t.Errorf("error %q, want it to say %q", dead[0].LastError, want)
	}
}

// What is sent follows the configured URL, escaped; errors never show its password; no
// Content-Type is made up when the sender sent none.
func TestTargetURLAndHeaders(t *testing.T) {
	var uri atomic.Value
	rec := newRecorder(t, func(_ int, r *http.Request, _ http.ResponseWriter) { uri.Store(r.RequestURI) })
	tg := rec.target("app")
	tg.URL = rec.srv.URL + "/a b/café?q=1"
	h := startRelay(t, []relay.Route{route(t, "fashn", "fashn", "app")}, tg)
	resp, err := http.Post(h.url+"/hooks/fashn", "", strings.NewReader(fashnDone))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	eventually(t, "delivery", func() bool { return len(rec.got()) == 1 })
	if got, want := uri.Load(), "/a%20b/caf%C3%A9?q=1"; got != want {
		t.Errorf("request URI %q, want %q", got, want)
	}
	if ct := rec.got()[0].header.Values("Content-Type"); len(ct) != 0 {
		t.Errorf("Content-Type %q sent, want none (the sender sent none)", ct)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close() // nothing listens there
	tg = baseTarget("http://relay:s3cr3t-pass@" + closed + "/hook")
	tg.Retry.MaxAttempts = 1
	h = startRelay(t, []relay.Route{route(t, "fashn", "fashn", "app")}, tg)
	h.post("/hooks/fashn", []byte(fashnDone))
	var dead []*relay.Delivery
	eventually(t, "dead letter", func() bool {
		dead, _ = h.store.ListDead(context.Background(), relay.DeadFilter{})
		return len(dead) == 1
	})
	if strings.Contains(dead[0].LastError, "s3cr3t-pass") || !strings.Contains(dead[0].LastError, "relay:xxxxx@") {
		t.Errorf("error %q shows the URL's password, or not the URL", dead[0].LastError)
	}
}

// A target that restarted closed every pooled connection at once: the next delivery tries them,
// finds each closed before writing, and goes out on a new one without a failed attempt.
func TestTargetRestartClosedEveryPooledConnection(t *testing.T) {
	const conns = 4
	var inFlight sync.WaitGroup
	inFlight.Add(conns)
	rec := newRecorder(t, func(n int, _ *http.Request, _ http.ResponseWriter) {
		if n <= conns {
			inFlight.Done()
			inFlight.Wait() // all four at once, so that each has its own connection
		}
	})
	tg := rec.target("app")
	tg.Concurrency = conns
	h := startRelay(t, []relay.Route{route(t, "fashn", "fashn", "app")}, tg)
	for i := range conns {
		h.post("/hooks/fashn", []byte(fashnBody(i)))
	}
	eventually(t, "four deliveries", func() bool {
		return int(sample(t, h.relay, "hookrelay_delivery_attempts_total", "outcome", "delivered")) == conns
	})
	rec.srv.CloseClientConnections()
	h.post("/hooks/fashn", []byte(fashnBody(conns)))
	eventually(t, "the fifth delivery", func() bool {
		return int(sample(t, h.relay, "hookrelay_delivery_attempts_total", "outcome", "delivered")) == conns+1
	})
	if n := sample(t, h.relay, "hookrelay_delivery_attempts_total", "outcome", "retry"); n != 0 {
		t.Errorf("%v attempts failed on connections the target had closed, want 0", n)
	}
}

// A keep-alive connection to a target is closed by the relay once it has been idle for 10 s
// (docs/DELIVERY.md), not at once and not never: both deliveries go out on one connection, and the
// target then sees it closed after at least 10 s without a request.
func TestTargetIdleConnectionCloses(t *testing.T) {
	type closed struct {
		served int
		idle   time.Duration
	}
	closes := make(chan closed, 4)
	addr := rawTarget(t, func(c net.Conn) {
		defer c.Close()
		br := bufio.NewReader(c)
		served, last := 0, time.Now()
		for {
			req, err := http.ReadRequest(br)
			if err != nil { // the relay closed the connection
				closes <- closed{served, time.Since(last)}
				return
			}
			io.Copy(io.Discard, req.Body)
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			served, last = served+1, time.Now()
		}
	})
	tg := baseTarget("http://" + addr + "/hook")
	tg.Concurrency = 1
	h := startRelay(t, []relay.Route{route(t, "fashn", "fashn", "app")}, tg)
	for i := range 2 {
		h.post("/hooks/fashn", []byte(fashnBody(i)))
		eventually(t, "delivery", func() bool {
			return int(sample(t, h.relay, "hookrelay_delivery_attempts_total", "outcome", "delivered")) == i+1
		})
	}
	select {
	case c := <-closes:
		if c.served != 2 {
			t.Errorf("the connection carried %d deliveries before it closed, want both (kept alive)", c.served)
		}
		// The pool closes a connection idle for more than 10 s; the target's clock starts a little
		// earlier than the relay's, when it writes the answer.
		if c.idle < 9*time.Second {
			t.Errorf("the connection closed after %v idle, want 10 s or more", c.idle)
		}
	case <-time.After(40 * time.Second):
		t.Fatal("the relay kept an idle connection to the target open for 40 s, want it closed after 10-20 s")
	}
}

// rawTarget serves each TCP connection with handle, for targets that misbehave below HTTP, and
// returns its address.
func rawTarget(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
	return ln.Addr().String()
}
