package tlsedge_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/hookrelay/hookrelay/relay/tlsedge"
	"github.com/hookrelay/hookrelay/relay/tlsedge/acmetest"
)

const domain = "hooks.relay.test"

// syncBuffer collects logs written from several goroutines.
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

// edgeServer is an Edge serving a small handler on a TLS listener and, with HTTP-01, a port-80
// style listener, both on loopback ports of their own (port 0).
type edgeServer struct {
	edge     *tlsedge.Edge
	addr     string // the TLS listener
	httpAddr string // the HTTP-01 listener; "" without
	logs     *syncBuffer
}

func startEdge(t *testing.T, ca *acmetest.CA, withHTTP bool, storage certmagic.Storage) *edgeServer {
	t.Helper()
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// The name in upper case: the edge normalises it as certmagic does.
	cfg := tlsedge.Config{Mode: tlsedge.ModeACME, Domains: []string{strings.ToUpper(domain)}, Email: "ops@relay.test",
		CA: ca.Directory, TrustedRootsFile: ca.ServerRootsFile, ListenAddr: ln.Addr().String(),
		Storage: storage, Logger: log}
	var hln net.Listener
	if withHTTP {
		if hln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		cfg.HTTPAddr = hln.Addr().String()
	}
	edge, err := tlsedge.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	serve(t, tls.NewListener(ln, edge.TLSConfig()), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "hello over "+r.Proto)
	}))
	if hln != nil {
		serve(t, hln, edge.HTTPHandler())
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := edge.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return &edgeServer{edge: edge, addr: cfg.ListenAddr, httpAddr: cfg.HTTPAddr, logs: logs}
}

func serve(t *testing.T, ln net.Listener, h http.Handler) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
}

func waitReady(t *testing.T, e *edgeServer) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := e.edge.Ready(context.Background())
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no certificate: %v\nlogs:\n%s", err, e.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// httpsClient trusts only the CA's issuing root and reaches domain at addr.
func httpsClient(ca *acmetest.CA, addr string) *http.Client {
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: ca.IssuerRoots, ServerName: domain},
		ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}
	return &http.Client{Transport: tr, Timeout: 5 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func TestACMEIssuance(t *testing.T) {
	for _, tc := range []struct {
		name  string
		http  bool
		check func(t *testing.T, ca *acmetest.CA)
	}{
		{name: "http-01", http: true},
		{name: "tls-alpn-01", http: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ca := acmetest.Start(t, acmetest.Options{})
			e := startEdge(t, ca, tc.http, &certmagic.FileStorage{Path: t.TempDir()})
			ca.Route(e.httpAddr, e.addr)
			waitReady(t, e)

			client := httpsClient(ca, e.addr)
			resp, err := client.Get("https://" + domain + "/")
			if err != nil {
				t.Fatalf("handshake verified against the CA's root: %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(body) != "hello over HTTP/2.0" {
				t.Errorf("body %q, want HTTP/2 negotiated", body)
			}
			if resp.TLS.Version < tls.VersionTLS12 {
				t.Errorf("TLS version %x", resp.TLS.Version)
			}
			exp := e.edge.NotAfter()[domain]
			if !exp.Equal(resp.TLS.PeerCertificates[0].NotAfter) {
				t.Errorf("NotAfter() = %v, served certificate expires %v", exp, resp.TLS.PeerCertificates[0].NotAfter)
			}
			// TLS 1.1 is refused.
			_, err = tls.Dial("tcp", e.addr, &tls.Config{RootCAs: ca.IssuerRoots, ServerName: domain, MaxVersion: tls.VersionTLS11})
			if err == nil {
				t.Error("a TLS 1.1 handshake succeeded")
			}
			if tc.http {
				// Everything but a challenge on the port-80 listener goes to HTTPS, method kept, for
				// the configured domain only: any other Host gets no redirect.
				noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
				_, tlsPort, _ := net.SplitHostPort(e.addr)
				for host, want := range map[string]string{
					domain + ":80":      "https://" + domain + ":" + tlsPort + "/hooks/x?a=1",
					"HOOKS.Relay.Test.": "https://" + domain + ":" + tlsPort + "/hooks/x?a=1",
					"127.0.0.1":         "",
					"evil.example":      "",
				} {
					req, _ := http.NewRequest(http.MethodPost, "http://"+e.httpAddr+"/hooks/x?a=1", strings.NewReader("{}"))
					req.Host = host
					resp, err := noFollow.Do(req)
					if err != nil {
						t.Fatal(err)
					}
					resp.Body.Close()
					switch {
					case want != "" && (resp.StatusCode != http.StatusPermanentRedirect || resp.Header.Get("Location") != want):
						t.Errorf("port 80, Host %s: %d %q, want 308 to %s", host, resp.StatusCode, resp.Header.Get("Location"), want)
					case want == "" && (resp.StatusCode != http.StatusMisdirectedRequest || resp.Header.Get("Location") != ""):
						t.Errorf("port 80, Host %s: %d %q, want 421 and no redirect", host, resp.StatusCode, resp.Header.Get("Location"))
					}
				}
			}
			if ca.Orders() != 1 {
				t.Errorf("%d orders at the CA, want 1", ca.Orders())
			}
		})
	}
}

// A CA that does not answer leaves the edge up, not ready, with the reason in Ready and a clear
// error in the log. Start returns while the CA holds every connection unanswered: obtaining runs
// in the background.
func TestACMEUnreachableCA(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := ln.Addr().String()
	answer := make(chan struct{}) // closed: the CA closes connections at once
	var conns sync.WaitGroup
	t.Cleanup(func() { ln.Close(); conns.Wait() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Go(func() {
				<-answer
				c.Close()
			})
		}
	}()
	logs := &syncBuffer{}
	// Nothing listens there: the CA is never reached, so no challenge is ever answered.
	edge, err := tlsedge.New(tlsedge.Config{Mode: tlsedge.ModeACME, Domains: []string{domain},
		CA: "https://" + deadAddr + "/dir", ListenAddr: "127.0.0.1:0",
		Storage: &certmagic.FileStorage{Path: t.TempDir()}, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	started := make(chan error, 1)
	go func() { started <- edge.Start(ctx) }()
	select {
	case err := <-started:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second): // a liveness bound: a blocking Start waits for the CA forever
		close(answer)
		t.Fatal("Start waits for the CA; obtaining must happen in the background")
	}
	close(answer)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "could not obtain a certificate") {
		if time.Now().After(deadline) {
			t.Fatalf("no clear error logged:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	err = edge.Ready(ctx)
	if err == nil || !strings.Contains(err.Error(), domain) || !strings.Contains(err.Error(), deadAddr) {
		t.Errorf("Ready = %v, want the domain and the failing CA named", err)
	}
	if !strings.Contains(logs.String(), deadAddr) {
		t.Errorf("the log does not name the CA:\n%s", logs.String())
	}
	if len(edge.NotAfter()) != 0 {
		t.Errorf("NotAfter = %v without a certificate", edge.NotAfter())
	}
}
