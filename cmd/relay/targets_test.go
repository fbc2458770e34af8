package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"log"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

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

func TestWhenConfig(t *testing.T) {
	twoTargets := strings.Replace(minimal, "targets:\n  - name: app\n", "targets:\n  - name: alerts\n    url: http://127.0.0.1:9001/\n  - name: app\n", 1)
	withTargets := func(entries string) string {
		return strings.Replace(twoTargets, "    targets: [app]\n", "    targets:\n"+entries, 1)
	}
	c, _, err := parseConfig([]byte(withTargets("      - app\n      - name: alerts\n        when: {status: [failed], body: {data.plan: pro}}\n")), "test.yaml", io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	routes, err := c.relayConfig().Routes, error(nil)
	if err != nil || strings.Join(routes[0].Targets, ",") != "app,alerts" || routes[0].When["alerts"] == nil || routes[0].When["app"] != nil {
		t.Fatalf("engine route: %+v, %v", routes[0], err)
	}
	// relay check prints a plain entry as a name and loads back.
	out, err := yaml.Marshal(c)
	if err != nil || !strings.Contains(string(out), "- app\n") || !strings.Contains(string(out), "- name: alerts\n") {
		t.Fatalf("marshalled: %v\n%s", err, out)
	}
	if _, _, err := parseConfig(out, "check-output.yaml", io.Discard); err != nil {
		t.Fatalf("relay check's output does not load: %v", err)
	}

	for _, tc := range []struct {
		name, entries string
		want          []string
	}{
		{"unknown status of a preset", "      - name: alerts\n        when: {status: [failed, cancelled]}\n",
			[]string{`routes[0].targets[0].when.status[1]: "cancelled" is not a status of preset fashn, whose statuses are failed, processing, succeeded`}},
		{"raw status the preset maps", "      - name: alerts\n        when: {status: [completed]}\n",
			[]string{`routes[0].targets[0].when.status[0]: "completed" is never seen: preset fashn normalises it to "succeeded"`}},
		{"bad body path", "      - name: alerts\n        when: {body: {a..b: x}}\n", []string{"routes[0].targets[0].when.body:", "empty segment"}},
		{"empty when", "      - name: alerts\n        when: {}\n", []string{"routes[0].targets[0].when: empty"}},
		{"unknown key in an entry", "      - name: alerts\n        wen: {status: [failed]}\n", []string{`test.yaml:13: routes[0].targets[0].wen: unknown key; did you mean when?`}},
		{"unknown key in when", "      - name: alerts\n        when: {state: [failed]}\n", []string{`test.yaml:13: routes[0].targets[0].when.state: unknown key; did you mean status?`}},
		{"target twice", "      - app\n      - name: app\n        when: {status: [failed]}\n", []string{`routes[0].targets[1]: target "app" is listed twice`}},
		{"unknown target", "      - name: nope\n        when: {status: [failed]}\n", []string{`routes[0].targets[0]: unknown target "nope"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := parseConfig([]byte(withTargets(tc.entries)), "test.yaml", io.Discard)
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

// jobCounter is a target that counts the webhooks it gets by job status.
type jobCounter struct {
	srv *httptest.Server
	mu  sync.Mutex
	n   map[string]int // X-Relay-Job-Status -> deliveries
}

func newJobCounter(t *testing.T) *jobCounter {
	jc := &jobCounter{n: map[string]int{}}
	jc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		jc.mu.Lock()
		jc.n[r.Header.Get("X-Relay-Job-Status")]++
		jc.mu.Unlock()
	}))
	t.Cleanup(jc.srv.Close)
	return jc
}

func (jc *jobCounter) counts() map[string]int {
	jc.mu.Lock()
	defer jc.mu.Unlock()
	return maps.Clone(jc.n)
}

// A status filter sends failed jobs to alerts and everything to archive; a webhook no target
// wants is acknowledged, counted and delivered nowhere.
func TestBinaryStatusFilter(t *testing.T) {
	alerts, archive := newJobCounter(t), newJobCounter(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	writeFile(t, cfg, fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: 127.0.0.1:0}
data_dir: %s
delivery: {poll_interval: 50ms, shutdown_grace: 2s}
targets:
  - {name: alerts, url: %s/alerts}
  - {name: archive, url: %s/archive}
routes:
  - name: fashn
    path: /hooks/fashn
    provider: fashn
    insecure: true
    targets:
      - archive
      - name: alerts
        when: {status: [failed]}
  - name: failures
    path: /hooks/failures
    provider: fashn
    insecure: true
    targets:
      - name: alerts
        when: {status: [failed]}
`, dir, alerts.srv.URL, archive.srv.URL))
	p := startProc(t, nil, "serve", "-config", cfg)
	for i, status := range []string{"completed", "failed", "completed", "failed", "failed", "completed"} {
		code, body := postJSON(t, p.url()+"/hooks/fashn", fmt.Sprintf(`{"id":"job-%d","status":%q}`, i, status))
		if code != http.StatusAccepted || body["id"] == nil {
			t.Fatalf("webhook %d: %d %v", i, code, body)
		}
	}
	code, body := postJSON(t, p.url()+"/hooks/failures", `{"id":"ok-1","status":"completed"}`)
	if code != http.StatusAccepted || body["filtered"] != true {
		t.Fatalf("a webhook no target wants: %d %v", code, body)
	}
	if code, _ := postJSON(t, p.url()+"/hooks/failures", `{"id":"bad-1","status":"failed"}`); code != http.StatusAccepted {
		t.Fatalf("failures route: %d", code)
	}
	waitUntil(t, "the deliveries", func() bool {
		return maps.Equal(alerts.counts(), map[string]int{"failed": 4}) &&
			maps.Equal(archive.counts(), map[string]int{"failed": 3, "succeeded": 3})
	})
	wants := []string{
		`hookrelay_webhooks_filtered_total{route="failures"} 1`,
		`hookrelay_webhooks_received_total{outcome="filtered",route="failures"} 1`,
		`hookrelay_webhooks_received_total{outcome="accepted",route="failures"} 1`,
		`hookrelay_webhooks_received_total{outcome="accepted",route="fashn"} 6`,
		`hookrelay_delivery_attempts_total{outcome="delivered",target="alerts"} 4`,
		`hookrelay_delivery_attempts_total{outcome="delivered",target="archive"} 6`,
	}
	admin := p.adminURL(t)
	// An attempt is counted once the store recorded it, just after the target answered.
	waitUntil(t, "the counts in /metrics", func() bool {
		resp, err := http.Get(admin + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for _, want := range wants {
			if !strings.Contains(string(b), want) {
				return false
			}
		}
		return true
	})
	if !strings.Contains(p.logs(), `"msg":"webhook filtered: no target of the route wants it"`) || !strings.Contains(p.logs(), `"job_id":"ok-1"`) {
		t.Errorf("the filtered webhook is not logged:\n%s", p.logs())
	}
}

// A reload rereads a header's value file and applies a changed filter, without a restart.
func TestBinaryReloadTargetHeaderAndFilter(t *testing.T) {
	type got struct{ auth, job string }
	deliveries := make(chan got, 10)
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		deliveries <- got{r.Header.Get("Authorization"), r.Header.Get("X-Relay-Job-Id")}
	}))
	defer target.Close()
	dir := t.TempDir()
	bearer := filepath.Join(dir, "bearer")
	cfg := filepath.Join(dir, "config.yaml")
	config := func(status string) {
		writeFile(t, cfg, fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: 127.0.0.1:0}
data_dir: %s
delivery: {poll_interval: 50ms, shutdown_grace: 2s}
targets:
  - name: app
    url: %s/in
    headers: [{name: Authorization, value_file: %s}]
routes:
  - name: fashn
    path: /hooks/fashn
    provider: fashn
    insecure: true
    targets:
      - name: app
        when: {status: [%s]}
`, dir, target.URL, bearer, status))
	}
	next := func() got {
		t.Helper()
		var g got
		waitUntil(t, "a delivery", func() bool {
			select {
			case g = <-deliveries:
				return true
			default:
				return false
			}
		})
		return g
	}
	var p *proc
	post := func(id, status string, wantFiltered bool) {
		t.Helper()
		code, body := postJSON(t, p.url()+"/hooks/fashn", fmt.Sprintf(`{"id":%q,"status":%q}`, id, status))
		if code != http.StatusAccepted || (body["filtered"] == true) != wantFiltered {
			t.Fatalf("%s (%s): %d %v, want filtered=%v", id, status, code, body, wantFiltered)
		}
	}
	writeFile(t, bearer, "Bearer first-0123456789\n")
	config("failed")
	p = startProc(t, nil, "serve", "-config", cfg)

	post("j1", "completed", true)
	post("j2", "failed", false)
	if g := next(); g != (got{"Bearer first-0123456789", "j2"}) {
		t.Fatalf("before the reload: %+v", g)
	}

	writeFile(t, bearer, "Bearer second-0123456789\n")
	config("succeeded")
	out, code := relayCmd(t, nil, "reload", "-admin", p.adminURL(t))
	if code != 0 || out != "reloaded:\n  routes changed: fashn\n  targets changed: app\n" {
		t.Fatalf("relay reload (exit %d): %s", code, out)
	}
	post("j3", "failed", true)
	post("j4", "completed", false)
	if g := next(); g != (got{"Bearer second-0123456789", "j4"}) {
		t.Fatalf("after the reload: %+v", g)
	}
}

func TestForwardHeadersConfig(t *testing.T) {
	withForward := func(list string) string {
		return strings.Replace(minimal, "    insecure: true\n", "    insecure: true\n    forward_headers: "+list+"\n", 1)
	}
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"hop-by-hop", withForward("[X-Event, Connection]"), "routes[0].forward_headers[1]: Connection is a hop-by-hop header"},
		{"relay's own", withForward("[x-relay-attempt]"), "routes[0].forward_headers[0]: X-Relay-Attempt is set by the relay itself"},
		{"content length", withForward("[Content-Length]"), "routes[0].forward_headers[0]: Content-Length is set by the relay itself"},
		{"twice", withForward("[X-Event, x-event]"), "routes[0].forward_headers[1]: X-Event is named twice"},
		{"bad name", withForward(`["X Event"]`), `routes[0].forward_headers[0]: "X Event" is not a valid header name`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := parseConfig([]byte(tc.yaml), "test.yaml", io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
	c, _, err := parseConfig([]byte(withForward("[Authorization, X-GitHub-Event]")), "test.yaml", io.Discard)
	if err != nil {
		t.Fatalf("Authorization named explicitly: %v", err)
	}
	if got := c.Routes[0].ForwardHeaders; !slices.Equal(got, []string{"Authorization", "X-GitHub-Event"}) {
		t.Errorf("forward headers %q", got)
	}
	// A GitHub route's verifier adds its headers after the file's (once), and check prints them.
	t.Setenv("HOOKRELAY_T_GITHUB", "github-secret-gh-9876543210zyx")
	path := filepath.Join(t.TempDir(), "relay.yaml")
	writeFile(t, path, minimal+`  - name: gh
    path: /hooks/gh
    provider: fashn
    targets: [app]
    verify: {type: github, secrets_env: [HOOKRELAY_T_GITHUB]}
    forward_headers: [X-Request-Id, x-github-event]
`)
	var out strings.Builder
	if err := cmdCheck([]string{"-config", path}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if want := "forward_headers:\n      - X-Request-Id\n      - x-github-event\n      - X-GitHub-Delivery\n"; !strings.Contains(out.String(), want) {
		t.Errorf("relay check does not show the effective forward headers %q:\n%s", want, out.String())
	}
}

// A route verified as GitHub passes the event header (and the delivery ID) to the target by
// default, plus what it names; nothing else of the sender's, not even its signature unless named.
func TestBinaryForwardHeaders(t *testing.T) {
	got := make(chan http.Header, 4)
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		got <- r.Header.Clone()
	}))
	defer target.Close()
	dir := t.TempDir()
	const secret = "github-secret-gh-9876543210zyx"
	cfg := writeConfig(t, dir, target.URL, "")
	writeFile(t, cfg, mustRead(t, cfg)+`  - name: gh
    path: /hooks/gh
    provider: generic
    generic: {job_id: hook_id}
    targets: [app]
    verify: {type: github, secrets_env: [HOOKRELAY_T_GITHUB]}
    forward_headers: [X-Request-Id, Authorization]
`)
	p := startProc(t, []string{"HOOKRELAY_T_GITHUB=" + secret}, "serve", "-config", cfg)
	body := `{"hook_id":42,"zen":"Keep it logically awesome."}`
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(body))
	req, _ := http.NewRequest(http.MethodPost, p.url()+"/hooks/gh", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Hub-Signature-256", "sha256="+hex.EncodeToString(mac.Sum(nil)))
	req.Header.Set("X-GitHub-Event", "ping")
	req.Header.Set("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
	req.Header.Set("X-Request-Id", "req-1")
	req.Header.Add("X-Request-Id", "req-2")
	req.Header.Set("Authorization", "Bearer sender-credential")
	req.Header.Set("Cookie", "session=secret")
	req.Header.Set("X-Other", "not forwarded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("status %d", resp.StatusCode)
	}
	var h http.Header
	select {
	case h = <-got:
	case <-time.After(20 * time.Second):
		t.Fatalf("no delivery\n%s", p.logs())
	}
	for name, want := range map[string][]string{
		"X-Github-Event":      {"ping"},
		"X-Github-Delivery":   {"72d3162e-cc78-11e3-81ab-4c9367dc0958"},
		"X-Request-Id":        {"req-1", "req-2"},
		"Authorization":       {"Bearer sender-credential"},
		"Cookie":              nil,
		"X-Other":             nil,
		"X-Hub-Signature-256": nil,
	} {
		if !slices.Equal(h.Values(name), want) {
			t.Errorf("target got %s = %q, want %q", name, h.Values(name), want)
		}
	}
	if h.Get("X-Relay-Job-Id") != "42" {
		t.Errorf("X-Relay-Job-Id = %q", h.Get("X-Relay-Job-Id"))
	}
}
