package main

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/hookrelay/hookrelay/relay/tlsedge/acmetest"
)

// withTarget puts extra keys under minimal's target.
func withTarget(extra string) string {
	return strings.Replace(minimal, "url: http://127.0.0.1:9000/hooks", "url: https://127.0.0.1:9000/hooks\n"+extra, 1)
}

func TestTargetConfigErrorsNameTheKey(t *testing.T) {
	dir := t.TempDir()
	ca := acmetest.NewPrivateCA(t, "root")
	caFile, certFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "c.pem")
	cert, _ := ca.Issue(t, true, "relay")
	writeFile(t, caFile, string(ca.PEM))
	writeFile(t, certFile, string(cert))
	for _, tc := range []struct {
		name string
		yaml string
		want []string
	}{
		{"unreadable CA file", withTarget("    tls: {ca_file: " + filepath.Join(dir, "none.pem") + "}"),
			[]string{"targets[0].tls.ca_file: cannot read", "no such file"}},
		{"cert without key", withTarget("    tls: {ca_file: " + caFile + ", cert_file: " + certFile + "}"),
			[]string{"targets[0].tls.key_file: cert_file is set without key_file"}},
		{"insecure_skip_verify", withTarget("    tls: {insecure_skip_verify: true}"),
			[]string{"targets[0].tls.insecure_skip_verify: is refused", "tls.ca_file"}},
		{"min_version", withTarget("    tls: {min_version: \"1.0\"}"), []string{`targets[0].tls.min_version: "1.0" is not 1.2 or 1.3`}},
		{"tls on http", strings.Replace(withTarget("    tls: {ca_file: "+caFile+"}"), "https://", "http://", 1), []string{"targets[0].tls: set, but the url is not https://"}},
		{"forbidden header name", withTarget("    headers:\n      - {name: X-Team, value: a}\n      - {name: Transfer-Encoding, value: chunked}"),
			[]string{"targets[0].headers[1].name: Transfer-Encoding is a hop-by-hop header"}},
		{"relay's own header", withTarget("    headers: [{name: x-relay-attempt, value: \"9\"}]"),
			[]string{"targets[0].headers[0].name: X-Relay-Attempt is set by the relay itself"}},
		{"header env unset", withTarget("    headers: [{name: Authorization, value_env: HOOKRELAY_TEST_UNSET}]"),
			[]string{"targets[0].headers[0].value_env: environment variable HOOKRELAY_TEST_UNSET is not set"}},
		{"header file unreadable", withTarget("    headers: [{name: Authorization, value_file: /nonexistent/x}]"),
			[]string{"targets[0].headers[0].value_file: cannot read secret file"}},
		{"header with two values", withTarget("    headers: [{name: Authorization, value: a, value_env: B}]"),
			[]string{"targets[0].headers[0]: set exactly one of value, value_env, value_file"}},
		{"unix socket without absolute path", strings.Replace(minimal, "http://127.0.0.1:9000/hooks", "unix://app.sock:/hooks", 1),
			[]string{"targets[0].url:", "unix://<absolute socket path>"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := parseConfig([]byte(tc.yaml), "test.yaml", io.Discard)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

// mtlsService is a private HTTPS service: its certificate is signed by a private CA and it
// requires a client certificate from that CA.
type mtlsService struct {
	srv        *httptest.Server
	mu         sync.Mutex
	reqs       []*http.Request
	handshakes bytes.Buffer // the server's log of refused handshakes
}

func newMTLSService(t *testing.T, ca *acmetest.PrivateCA) *mtlsService {
	t.Helper()
	certPEM, keyPEM := ca.Issue(t, false, "127.0.0.1")
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	s := &mtlsService{}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		s.mu.Lock()
		s.reqs = append(s.reqs, r)
		s.mu.Unlock()
	}))
	s.srv.Config.ErrorLog = log.New(&lockedWriter{mu: &s.mu, w: &s.handshakes}, "", 0)
	s.srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, ClientCAs: ca.Pool(), ClientAuth: tls.RequireAndVerifyClientCert}
	s.srv.StartTLS()
	t.Cleanup(s.srv.Close)
	return s
}

func (s *mtlsService) got() ([]*http.Request, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*http.Request(nil), s.reqs...), s.handshakes.String()
}

// A target behind a private CA that requires a client certificate gets its deliveries, with
// headers from an env var, a file and the config, from a relay that has the certificate; a
// target without it is refused by the service. No header value reaches the logs or relay check.
func TestBinaryMutualTLSTargetWithHeaders(t *testing.T) {
	const (
		apiKey = "api-key-from-env-4b1d93e0a7"
		bearer = "Bearer token-from-file-77c2e9f1d0"
	)
	dir := t.TempDir()
	ca := acmetest.NewPrivateCA(t, "internal root")
	svc := newMTLSService(t, ca)
	clientCert, clientKey := ca.Issue(t, true, "hookrelay")
	files := map[string]string{"ca.pem": string(ca.PEM), "relay.crt": string(clientCert), "relay.key": string(clientKey), "bearer": bearer + "\n"}
	for name, text := range files {
		writeFile(t, filepath.Join(dir, name), text)
	}
	cfg := filepath.Join(dir, "config.yaml")
	writeFile(t, cfg, fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: 127.0.0.1:0}
data_dir: %[1]s
log: {level: debug}
delivery: {poll_interval: 50ms, shutdown_grace: 2s}
targets:
  - name: app
    url: %[2]s/hooks/relay
    tls:
      ca_file: %[1]s/ca.pem
      ca_only: true
      cert_file: %[1]s/relay.crt
      key_file: %[1]s/relay.key
      min_version: "1.3"
    headers:
      - {name: Authorization, value_file: %[1]s/bearer}
      - {name: X-Api-Key, value_env: HOOKRELAY_T_APIKEY}
      - {name: X-Team, value: payments}
  - name: nocert
    url: %[2]s/hooks/relay
    tls: {ca_file: %[1]s/ca.pem}
    retry: {initial: 10ms, max_backoff: 50ms}
routes:
  - name: fashn
    path: /hooks/fashn
    provider: fashn
    targets: [app, nocert]
    insecure: true
`, dir, svc.srv.URL))
	env := []string{"HOOKRELAY_T_APIKEY=" + apiKey}
	check, code := relayCmd(t, env, "check", "-config", cfg)
	if code != 0 || !strings.Contains(check, "header Authorization set (value not shown)") {
		t.Fatalf("check (exit %d):\n%s", code, check)
	}

	p := startProc(t, env, "serve", "-config", cfg)
	if status, _ := postJSON(t, p.url()+"/hooks/fashn", `{"id":"j1","status":"completed"}`); status != http.StatusAccepted {
		t.Fatalf("status %d", status)
	}
	waitUntil(t, "the delivery over mutual TLS", func() bool { reqs, _ := svc.got(); return len(reqs) == 1 })
	waitUntil(t, "the service to refuse the relay without a certificate", func() bool {
		_, hs := svc.got()
		return strings.Contains(hs, "didn't provide a certificate") &&
			strings.Contains(p.logs(), `"target":"nocert"`) && strings.Contains(p.logs(), "delivery failed, will retry")
	})
	reqs, _ := svc.got()
	r := reqs[0]
	if len(reqs) != 1 || r.TLS.PeerCertificates[0].Subject.CommonName != "hookrelay" || r.TLS.Version != tls.VersionTLS13 {
		t.Fatalf("the service got %d requests; the first from %v", len(reqs), r.TLS.PeerCertificates[0].Subject)
	}
	for name, want := range map[string]string{"Authorization": bearer, "X-Api-Key": apiKey, "X-Team": "payments", "X-Relay-Job-Id": "j1"} {
		if got := r.Header.Get(name); got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-p.done
	for _, secret := range []string{apiKey, "token-from-file"} {
		if strings.Contains(p.logs(), secret) || strings.Contains(check, secret) {
			t.Errorf("a header value (%s) appears in the logs or relay check", secret)
		}
	}
}

// A unix socket target gets its deliveries at the HTTP path after the socket.
func TestBinaryUnixSocketTarget(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "app.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 10)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		got <- r.Method + " " + r.URL.RequestURI() + " " + r.Header.Get("X-Relay-Job-Id") + " " + string(body)
	}))
	srv.Listener = ln
	srv.Start()
	defer srv.Close()
	cfg := writeConfig(t, dir, "unix://"+sock+":/hooks/relay?via=socket", "")
	p := startProc(t, nil, "serve", "-config", cfg)
	if status, _ := postJSON(t, p.url()+"/hooks/fashn", `{"id":"u1","status":"completed"}`); status != http.StatusAccepted {
		t.Fatalf("status %d", status)
	}
	want := `POST /hooks/relay?via=socket u1 {"id":"u1","status":"completed"}`
	waitUntil(t, "the delivery on the socket", func() bool {
		select {
		case g := <-got:
			if g != want {
				t.Fatalf("the socket got %q, want %q", g, want)
			}
			return true
		default:
			return false
		}
	})
}
