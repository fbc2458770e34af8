package main

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
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

	"github.com/redis/go-redis/v9"

	"github.com/hookrelay/hookrelay/relay"
	"github.com/hookrelay/hookrelay/relay/redistest"
	"github.com/hookrelay/hookrelay/relay/tlsedge/acmetest"
)

// Tests of the edge's defences (issue 14) against the real binary.

// edgeToken is a URL token the edge tests configure, and edgeHMAC an HMAC secret: each has its
// own variable.
const (
	edgeToken = "tok-0123456789abcdef"
	edgeHMAC  = "hmac-secret-0123456789"
)

// edgeTarget counts what the relay delivers.
type edgeTarget struct {
	mu     sync.Mutex
	bodies []string
	url    string
}

func newEdgeTarget(t *testing.T) *edgeTarget {
	t.Helper()
	et := &edgeTarget{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		et.mu.Lock()
		et.bodies = append(et.bodies, string(b))
		et.mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	et.url = srv.URL
	return et
}

func (et *edgeTarget) count() int {
	et.mu.Lock()
	defer et.mu.Unlock()
	return len(et.bodies)
}

// edgeConfig writes a config with one target at targetURL, the top-level keys in top and the
// routes in routes (a YAML list, indented by two spaces), and returns its path.
func edgeConfig(t *testing.T, targetURL, top, routes string) string {
	t.Helper()
	dir := t.TempDir()
	cfg := fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: 127.0.0.1:0}
data_dir: %s
log: {level: debug}
delivery: {poll_interval: 50ms, shutdown_grace: 2s}
%s
targets:
  - name: app
    url: %s
    timeout: 5s
    retry: {initial: 10ms, max_backoff: 50ms}
routes:
%s`, dir, top, targetURL, routes)
	path := filepath.Join(dir, "config.yaml")
	writeFile(t, path, cfg)
	return path
}

// edgeEnv passes the edge tests' secrets.
var edgeEnv = []string{"EDGE_TOKEN=" + edgeToken, "EDGE_HMAC=" + edgeHMAC}

// send posts body to url with headers and returns the status.
func send(t *testing.T, url, body string, hdr map[string]string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// Requests with a wrong URL token spend nothing of the route-wide limit: the provider's webhook
// right after them is accepted. The token is checked before the body is read.
func TestBinaryBadTokensDoNotSpendTheRouteLimit(t *testing.T) {
	et := newEdgeTarget(t)
	cfg := edgeConfig(t, et.url, "", `  - name: fashn
    path: /hooks/fashn
    provider: fashn
    targets: [app]
    verify: {type: url_token, secrets_env: [EDGE_TOKEN]}
    rate_limit: {route: 2, route_burst: 2}
`)
	p := startProc(t, edgeEnv, "serve", "-config", cfg)
	for i := range 3 {
		if got := send(t, p.url()+"/hooks/fashn/wrong-token-0123456789", `{"id":"x","status":"completed"}`, nil); got != http.StatusUnauthorized {
			t.Fatalf("bad token %d: %d, want 401", i+1, got)
		}
	}
	if got := send(t, p.url()+"/hooks/fashn/"+edgeToken, `{"id":"job-1","status":"completed"}`, nil); got != http.StatusAccepted {
		t.Fatalf("the provider's webhook after three bad tokens: %d, want 202", got)
	}
	if got := send(t, p.url()+"/hooks/fashn/"+edgeToken, `{"id":"job-2","status":"completed"}`, nil); got != http.StatusAccepted {
		t.Fatalf("second webhook: %d, want 202", got)
	}
	if got := send(t, p.url()+"/hooks/fashn/"+edgeToken, `{"id":"job-3","status":"completed"}`, nil); got != http.StatusTooManyRequests {
		t.Fatalf("third webhook over route_burst 2: %d, want 429", got)
	}

	// A wrong token whose body never comes is answered: the relay did not wait for the body.
	pr, pw := io.Pipe()
	defer pw.Close()
	req, _ := http.NewRequest(http.MethodPost, p.url()+"/hooks/fashn/wrong-token-0123456789", pr)
	req.ContentLength = 100
	got := make(chan int, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			got <- 0
			return
		}
		resp.Body.Close()
		got <- resp.StatusCode
	}()
	select {
	case status := <-got:
		if status != http.StatusUnauthorized {
			t.Fatalf("wrong token without body: %d, want 401", status)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the relay waited for the body of a request with a wrong URL token")
	}
}

// trusted_proxies needs client_ip_header, and may not trust every address: relay check says which
// keys to fix.
func TestBinaryTrustedProxiesNeedTheHeader(t *testing.T) {
	route := `  - name: fotor
    path: /hooks/fotor
    provider: fotor
    targets: [app]
`
	for _, tt := range []struct {
		name, top string
		want      []string
	}{
		{"no header", "trusted_proxies: [127.0.0.1]", []string{"client_ip_header: required when trusted_proxies is set"}},
		{"all of IPv4", "trusted_proxies: [0.0.0.0/0]\nclient_ip_header: X-Forwarded-For", []string{"trusted_proxies:", "0.0.0.0/0"}},
		{"all of IPv6", "trusted_proxies: [10.0.0.0/8, \"::/0\"]\nclient_ip_header: X-Forwarded-For", []string{"trusted_proxies:", "::/0"}},
		{"IPv4 in two halves", "trusted_proxies: [0.0.0.0/1, 128.0.0.0/1]\nclient_ip_header: X-Forwarded-For", []string{"trusted_proxies:", "0.0.0.0/0"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, code := relayCmd(t, nil, "check", "-config", edgeConfig(t, "http://127.0.0.1:1", tt.top, route))
			if code != 1 {
				t.Fatalf("relay check exited %d, want 1:\n%s", code, out)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

// Behind a trusted proxy that sets X-Forwarded-For, a sender's own Forwarded header does not make
// it an allowlisted Fotor address.
func TestBinaryForwardedFromSenderIgnored(t *testing.T) {
	et := newEdgeTarget(t)
	cfg := edgeConfig(t, et.url, "trusted_proxies: [127.0.0.1]\nclient_ip_header: X-Forwarded-For", `  - name: fotor
    path: /hooks/fotor
    provider: fotor
    targets: [app]
`)
	p := startProc(t, nil, "serve", "-config", cfg)
	body := `{"taskId":"t-1","status":1}`
	if got := send(t, p.url()+"/hooks/fotor", body, map[string]string{"Forwarded": "for=54.212.95.175", "X-Forwarded-For": "203.0.113.7"}); got != http.StatusForbidden {
		t.Fatalf("sender's Forwarded for=54.212.95.175: %d, want 403", got)
	}
	if got := send(t, p.url()+"/hooks/fotor", body, map[string]string{"X-Forwarded-For": "54.212.95.175"}); got != http.StatusOK {
		t.Fatalf("Fotor's address set by the proxy: %d, want 200", got)
	}
}

// The admin API, without a token (the loopback default), answers only its own names, and refuses
// cross-site state changes from a browser.
func TestBinaryAdminHostAndOrigin(t *testing.T) {
	et := newEdgeTarget(t)
	cfg := edgeConfig(t, et.url, "", `  - name: fashn
    path: /hooks/fashn
    provider: fashn
    targets: [app]
    insecure: true
`)
	cfg = strings.Replace(mustRead(t, cfg), "admin: {listen: 127.0.0.1:0}", "admin: {listen: 127.0.0.1:0, hosts: [relay-admin.internal]}", 1)
	path := filepath.Join(t.TempDir(), "config.yaml")
	writeFile(t, path, cfg)
	p := startProc(t, nil, "serve", "-config", path)
	admin := p.adminURL(t)
	port := admin[strings.LastIndexByte(admin, ':')+1:]

	for _, tt := range []struct {
		name, method, path, host string
		hdr                      map[string]string
		want                     int
	}{
		{"rebound name", "GET", "/v1/dead-letters", "evil.example:" + port, nil, http.StatusMisdirectedRequest},
		{"rebound name, reload", "POST", "/v1/reload", "attacker.test", nil, http.StatusMisdirectedRequest},
		{"another IP", "GET", "/v1/dead-letters", "10.1.2.3:" + port, nil, http.StatusMisdirectedRequest},
		{"listen address", "GET", "/v1/dead-letters", "127.0.0.1:" + port, nil, http.StatusOK},
		{"localhost", "GET", "/v1/dead-letters", "localhost:" + port, nil, http.StatusOK},
		{"configured name", "GET", "/v1/dead-letters", "Relay-Admin.internal:" + port, nil, http.StatusOK},
		{"cross-site Origin", "POST", "/v1/dead-letters/replay?all=true", "127.0.0.1:" + port,
			map[string]string{"Origin": "http://evil.example"}, http.StatusForbidden},
		{"cross-site fetch", "POST", "/v1/reload", "localhost:" + port,
			map[string]string{"Sec-Fetch-Site": "cross-site"}, http.StatusForbidden},
		{"same-site page", "DELETE", "/v1/dead-letters/x", "localhost:" + port,
			map[string]string{"Sec-Fetch-Site": "same-site"}, http.StatusForbidden},
		{"cross-site GET is only a read", "GET", "/healthz", "localhost:" + port,
			map[string]string{"Sec-Fetch-Site": "cross-site"}, http.StatusOK},
		{"no browser: the CLI", "POST", "/v1/dead-letters/replay?all=true", "127.0.0.1:" + port, nil, http.StatusOK},
		{"same origin", "POST", "/v1/reload", "127.0.0.1:" + port,
			map[string]string{"Origin": "http://127.0.0.1:" + port}, http.StatusOK},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, admin+tt.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Host = tt.host
			for k, v := range tt.hdr {
				req.Header.Set(k, v)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Fatalf("%s %s (Host %s): %d %s, want %d", tt.method, tt.path, tt.host, resp.StatusCode, body, tt.want)
			}
		})
	}
}

// A URL token never reaches the log, whatever near miss of the route's path carries it, and an
// unmatched path is logged only up to what a route's path shares with it.
func TestBinaryNearMissPathsDoNotLogTheToken(t *testing.T) {
	et := newEdgeTarget(t)
	cfg := edgeConfig(t, et.url, "", `  - name: fashn
    path: /hooks/fashn
    provider: fashn
    targets: [app]
    verify: {type: url_token, secrets_env: [EDGE_TOKEN]}
`)
	p := startProc(t, edgeEnv, "serve", "-config", cfg)
	for _, tt := range []struct {
		path, logged string
		status       int
	}{
		{"/hooks/fashn/" + edgeToken, `"path":"/hooks/fashn/<token>"`, http.StatusAccepted},
		{"//hooks/fashn/" + edgeToken, `"path":"/hooks/fashn/..."`, http.StatusNotFound},
		{"/hooks//fashn/" + edgeToken, `"path":"/hooks/fashn/..."`, http.StatusNotFound},
		{"/hooks/FASHN/" + edgeToken, `"path":"/hooks/fashn/..."`, http.StatusNotFound},
		{"/hooks/fashn" + edgeToken, `"path":"/hooks/..."`, http.StatusNotFound},
		{"/hooks/fashn/./" + edgeToken, `"path":"/hooks/fashn/..."`, http.StatusNotFound},
		{"/hoks/fashn/" + edgeToken, `"path":"/..."`, http.StatusNotFound},
		{"/" + edgeToken, `"path":"/..."`, http.StatusNotFound},
		{"/hooks/fashn/" + edgeToken + "/x", `"path":"/hooks/fashn/..."`, http.StatusNotFound},
		{"/HOOKS", `"path":"/hooks"`, http.StatusNotFound},
	} {
		before := len(p.logs())
		// A raw request line: net/http's client would clean some of these paths itself.
		got := rawPost(t, p.url(), tt.path)
		if got != tt.status {
			t.Errorf("%s: %d, want %d", tt.path, got, tt.status)
		}
		var line string
		waitUntil(t, "the log line of "+tt.path, func() bool {
			line = p.logs()[before:]
			return strings.Contains(line, `"msg":"webhook `)
		})
		if strings.Contains(line, edgeToken) || strings.Contains(strings.ToLower(line), strings.ToLower(edgeToken)) {
			t.Errorf("%s: the token is in the log:\n%s", tt.path, line)
		}
		if !strings.Contains(line, tt.logged) {
			t.Errorf("%s: log line lacks %s:\n%s", tt.path, tt.logged, line)
		}
	}
}

// rawPost sends a POST with path exactly as given on the request line and returns the status.
func rawPost(t *testing.T, base, path string) int {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	body := `{"id":"near-miss","status":"completed"}`
	fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", path, len(body), body)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// Credentials in a Redis URL or a target URL never reach relay check's output, serve's error or
// the reload API's answer.
func TestBinaryURLCredentialsRedacted(t *testing.T) {
	const pw = "s3cret-Passw0rd"
	route := `  - name: fashn
    path: /hooks/fashn
    provider: fashn
    targets: [app]
    insecure: true
`
	for _, bad := range []string{
		"redis://user:" + pw + "@redis.internal:abc/0",        // url.Parse fails: it quotes the URL
		"redis://:" + pw + "@redis.internal:6379/x",           // go-redis fails on the database
		"redis://user:" + pw + "%zz@redis.internal:6379/0",    // the cause would quote the escape
		"redis://user:" + pw + "@redis.internal:6379/0",       // parses: refused for holding a password
		"redix://user:" + pw + "@redis.internal:6379/0",       // wrong scheme
		"redis://user:" + pw + "@redis.internal:6379/0?x=y",   // unknown option
		"redis://user:" + pw + "/x@redis.internal:6379/0?x=y", // a slash in the password
	} {
		cfg := edgeConfig(t, "http://127.0.0.1:1", "store: {type: redis, redis: {url: \""+bad+"\"}}", route)
		for _, cmd := range []string{"check", "serve"} {
			out, code := relayCmd(t, nil, cmd, "-config", cfg)
			if code != 1 || !strings.Contains(out, "store.redis.url") {
				t.Errorf("%s with %s: exit %d, want 1 and an error at store.redis.url:\n%s", cmd, bad, code, out)
			}
			if strings.Contains(out, pw) {
				t.Errorf("%s with %s prints the password:\n%s", cmd, bad, out)
			}
		}
	}

	// A target URL's user information is printed redacted.
	cfg := edgeConfig(t, "http://relay:"+pw+"@127.0.0.1:9000/hooks", "", route)
	out, code := relayCmd(t, nil, "check", "-config", cfg)
	if code != 0 || strings.Contains(out, pw) || !strings.Contains(out, "http://relay:xxxxx@127.0.0.1:9000/hooks") {
		t.Errorf("check of a target URL with a password: exit %d, want 0 and the URL redacted:\n%s", code, out)
	}
	bad := edgeConfig(t, "http://relay:"+pw+"@127.0.0.1:9000:bad/hooks", "", route)
	if out, code := relayCmd(t, nil, "check", "-config", bad); code != 1 || strings.Contains(out, pw) {
		t.Errorf("check of a malformed target URL with a password: exit %d, want 1 without the password:\n%s", code, out)
	}

	// The reload API's 422 says what is wrong, without the password.
	et := newEdgeTarget(t)
	path := edgeConfig(t, et.url, "", route)
	p := startProc(t, nil, "serve", "-config", path)
	admin := p.adminURL(t)
	good := mustRead(t, path)
	writeFile(t, path, strings.Replace(good, "\ntargets:", "\nstore: {type: redis, redis: {url: \"redis://:"+pw+"@redis.internal:6379/x\"}}\ntargets:", 1))
	resp, err := http.Post(admin+"/v1/reload", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(string(body), "store.redis.url") || strings.Contains(string(body), pw) {
		t.Errorf("reload with a bad Redis URL: %d %s, want 422 naming store.redis.url without the password", resp.StatusCode, body)
	}
	if strings.Contains(p.logs(), pw) {
		t.Errorf("the relay's log holds the password:\n%s", p.logs())
	}
}

// Signing secrets shorter than 16 bytes are refused, for every scheme.
func TestBinaryShortSecretsRefused(t *testing.T) {
	for _, v := range []string{
		"{type: hmac, header: X-Signature, secrets_env: [SHORT]}",
		"{type: github, secrets_env: [SHORT]}",
		"{type: stripe, secrets_env: [SHORT]}",
		"{type: standard_webhooks, secrets_env: [SHORT_WHSEC]}",
		"{type: url_token, secrets_env: [SHORT]}",
	} {
		cfg := edgeConfig(t, "http://127.0.0.1:1", "", `  - name: custom
    path: /hooks/custom
    provider: generic
    generic: {job_id: id}
    targets: [app]
    verify: `+v+"\n")
		// SHORT_WHSEC is whsec_ and the base64 of 15 bytes.
		out, code := relayCmd(t, []string{"SHORT=k", "SHORT_WHSEC=whsec_MDEyMzQ1Njc4OWFiY2Rl"}, "check", "-config", cfg)
		if code != 1 || !strings.Contains(out, "routes[0].verify") || !strings.Contains(out, "at least 16") {
			t.Errorf("verify %s with a short secret: exit %d, want 1 and an error asking for 16 bytes:\n%s", v, code, out)
		}
	}
}

// A secret file that group or others can read is warned about; one only its owner reads is not.
func TestBinarySecretFilePermissionsWarned(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		mode os.FileMode
		warn bool
	}{{0o644, true}, {0o640, true}, {0o600, false}, {0o400, false}} {
		f := filepath.Join(dir, fmt.Sprintf("token-%o", tt.mode))
		writeFile(t, f, edgeToken+"\n")
		if err := os.Chmod(f, tt.mode); err != nil {
			t.Fatal(err)
		}
		cfg := edgeConfig(t, "http://127.0.0.1:1", "", `  - name: fashn
    path: /hooks/fashn
    provider: fashn
    targets: [app]
    verify: {type: url_token, secrets_files: [`+f+`]}
`)
		out, code := relayCmd(t, nil, "check", "-config", cfg)
		if code != 0 {
			t.Fatalf("check: exit %d\n%s", code, out)
		}
		warned := strings.Contains(out, "secret file is readable by group or others") && strings.Contains(out, "routes[0].verify.secrets_files[0]")
		if warned != tt.warn {
			t.Errorf("mode %04o: warned %v, want %v:\n%s", tt.mode, warned, tt.warn, out)
		}
		if strings.Contains(out, edgeToken) {
			t.Errorf("check prints the token:\n%s", out)
		}
	}
}

// Bodies the relay and a target could decode differently are refused: invalid UTF-8 (which
// encoding/json would turn into U+FFFD, making two job IDs one) and keys on the job-ID or status
// path that differ only in case.
func TestBinaryAmbiguousBodiesRefused(t *testing.T) {
	et := newEdgeTarget(t)
	cfg := edgeConfig(t, et.url, "", `  - name: fashn
    path: /hooks/fashn
    provider: fashn
    targets: [app]
    insecure: true
`)
	p := startProc(t, nil, "serve", "-config", cfg)
	for _, tt := range []struct {
		body string
		want int
	}{
		{"{\"id\":\"job-\xff\",\"status\":\"completed\"}", http.StatusBadRequest},
		{"{\"id\":\"job-\xfe\",\"status\":\"completed\"}", http.StatusBadRequest},
		{"{\"id\":\"job-1\",\"status\":\"completed\",\"note\":\"\xc3\"}", http.StatusBadRequest},
		{`{"id":"job-\ud800","status":"completed"}`, http.StatusBadRequest}, // escaped, the same U+FFFD
		{`{"id":"job-\udbff","status":"completed"}`, http.StatusBadRequest},
		{`{"id":"A","ID":"B","status":"completed"}`, http.StatusBadRequest},
		{`{"ID":"B","id":"A","status":"completed"}`, http.StatusBadRequest},
		{`{"id":"A","status":"completed","STATUS":"failed"}`, http.StatusBadRequest},
		{`{"id":"A","id":"B","status":"completed"}`, http.StatusAccepted}, // one key twice: the last, for everyone
		{`{"id":"job-é","status":"completed","Id2":"x"}`, http.StatusAccepted},
	} {
		if got := send(t, p.url()+"/hooks/fashn", tt.body, nil); got != tt.want {
			t.Errorf("%q: %d, want %d", tt.body, got, tt.want)
		}
	}
	waitUntil(t, "two deliveries", func() bool { return et.count() == 2 })
}

// Addresses of one IPv6 /64 share one per-address bucket: a sender cannot take a fresh address
// per request.
func TestBinaryIPv6SendersGroupedBy64(t *testing.T) {
	et := newEdgeTarget(t)
	cfg := edgeConfig(t, et.url, "trusted_proxies: [127.0.0.1]\nclient_ip_header: X-Forwarded-For", `  - name: fashn
    path: /hooks/fashn
    provider: fashn
    targets: [app]
    insecure: true
    rate_limit: {per_ip: 1, per_ip_burst: 1}
`)
	p := startProc(t, nil, "serve", "-config", cfg)
	admitted := 0
	for i := range 200 {
		body := fmt.Sprintf(`{"id":"v6-%d","status":"completed"}`, i)
		switch got := send(t, p.url()+"/hooks/fashn", body, map[string]string{"X-Forwarded-For": fmt.Sprintf("2001:db8:5:6::%x", i+1)}); got {
		case http.StatusAccepted:
			admitted++
		case http.StatusTooManyRequests:
		default:
			t.Fatalf("request %d: %d", i, got)
		}
	}
	if admitted != 1 {
		t.Errorf("%d of 200 requests from one /64 admitted with per_ip_burst 1, want 1", admitted)
	}
	if got := send(t, p.url()+"/hooks/fashn", `{"id":"other","status":"completed"}`, map[string]string{"X-Forwarded-For": "2001:db8:5:7::1"}); got != http.StatusAccepted {
		t.Errorf("another /64: %d, want 202", got)
	}
}

// A signed webhook without a job ID, sent again, is a duplicate: each scheme names it by what it
// signs. A job ID can also come from a header (generic.job_id_header).
func TestBinaryReplaysOfSignedWebhooksWithoutJobID(t *testing.T) {
	et := newEdgeTarget(t)
	whKey := []byte("0123456789abcdef0123456789abcdef")
	env := append([]string{"EDGE_WHSEC=whsec_" + base64.StdEncoding.EncodeToString(whKey)}, edgeEnv...)
	route := func(name, verify, generic string) string {
		return fmt.Sprintf("  - name: %s\n    path: /hooks/%s\n    provider: generic\n    generic: %s\n    targets: [app]\n    verify: %s\n", name, name, generic, verify)
	}
	cfg := edgeConfig(t, et.url, "", route("hmac", "{type: hmac, header: X-Signature, secrets_env: [EDGE_HMAC]}", "{job_id: id}")+
		route("github", "{type: github, secrets_env: [EDGE_HMAC]}", "{job_id: id}")+
		route("sw", "{type: standard_webhooks, secrets_env: [EDGE_WHSEC]}", "{job_id: id}")+
		route("stripe", "{type: stripe, secrets_env: [EDGE_HMAC]}", "{job_id: data.object.job}")+
		route("keyed", "{type: hmac, header: X-Signature, secrets_env: [EDGE_HMAC]}", "{job_id_header: Idempotency-Key}"))
	p := startProc(t, env, "serve", "-config", cfg)
	mac := func(msg string) string {
		m := hmac.New(sha256.New, []byte(edgeHMAC))
		m.Write([]byte(msg))
		return hex.EncodeToString(m.Sum(nil))
	}
	now := time.Now().Unix()
	ts := strconv.FormatInt(now, 10)
	sw := func(id, body string) map[string]string {
		return map[string]string{"Webhook-Id": id, "Webhook-Timestamp": ts, "Webhook-Signature": relay.SignStandardWebhook(whKey, id, now, []byte(body))}
	}
	stripe := func(t, body string) map[string]string {
		return map[string]string{"Stripe-Signature": "t=" + t + ",v1=" + mac(t+"."+body)}
	}
	ts2 := strconv.FormatInt(now-1, 10)
	for _, tt := range []struct {
		name, path, body string
		hdr              map[string]string
		want             int
	}{
		{"hmac", "/hooks/hmac", `{"event":"ping"}`, map[string]string{"X-Signature": mac(`{"event":"ping"}`)}, http.StatusAccepted},
		{"hmac replay", "/hooks/hmac", `{"event":"ping"}`, map[string]string{"X-Signature": mac(`{"event":"ping"}`)}, http.StatusOK},
		{"hmac another body", "/hooks/hmac", `{"event":"pong"}`, map[string]string{"X-Signature": mac(`{"event":"pong"}`)}, http.StatusAccepted},
		{"github", "/hooks/github", `{"zen":"x"}`, map[string]string{"X-Hub-Signature-256": "sha256=" + mac(`{"zen":"x"}`), "X-GitHub-Delivery": "d-1"}, http.StatusAccepted},
		{"github replay, new delivery header", "/hooks/github", `{"zen":"x"}`, map[string]string{"X-Hub-Signature-256": "sha256=" + mac(`{"zen":"x"}`), "X-GitHub-Delivery": "d-2"}, http.StatusOK},
		{"standard webhooks", "/hooks/sw", `{"a":1}`, sw("msg_1", `{"a":1}`), http.StatusAccepted},
		{"standard webhooks replay", "/hooks/sw", `{"a":1}`, sw("msg_1", `{"a":1}`), http.StatusOK},
		{"standard webhooks, another message", "/hooks/sw", `{"a":1}`, sw("msg_2", `{"a":1}`), http.StatusAccepted},
		{"stripe", "/hooks/stripe", `{"id":"evt_1","data":{}}`, stripe(ts, `{"id":"evt_1","data":{}}`), http.StatusAccepted},
		{"stripe replay", "/hooks/stripe", `{"id":"evt_1","data":{}}`, stripe(ts, `{"id":"evt_1","data":{}}`), http.StatusOK},
		{"stripe retry of the event, new signature", "/hooks/stripe", `{"id":"evt_1","data":{}}`, stripe(ts2, `{"id":"evt_1","data":{}}`), http.StatusOK},
		{"stripe, another event", "/hooks/stripe", `{"id":"evt_2","data":{}}`, stripe(ts, `{"id":"evt_2","data":{}}`), http.StatusAccepted},
		{"job ID header", "/hooks/keyed", `{"n":1}`, map[string]string{"X-Signature": mac(`{"n":1}`), "Idempotency-Key": "k-1"}, http.StatusAccepted},
		{"job ID header again", "/hooks/keyed", `{"n":2}`, map[string]string{"X-Signature": mac(`{"n":2}`), "Idempotency-Key": "k-1"}, http.StatusOK},
		{"job ID header, another key", "/hooks/keyed", `{"n":2}`, map[string]string{"X-Signature": mac(`{"n":2}`), "Idempotency-Key": "k-2"}, http.StatusAccepted},
	} {
		if got := send(t, p.url()+tt.path, tt.body, tt.hdr); got != tt.want {
			t.Errorf("%s: %d, want %d", tt.name, got, tt.want)
		}
	}
	waitUntil(t, "9 deliveries", func() bool { return et.count() == 9 })
}

// A reload keeps the state of every check whose settings did not change: rate-limit buckets stay
// spent and fal's keys stay cached. A changed rate limit starts afresh.
func TestBinaryReloadKeepsCheckState(t *testing.T) {
	et := newEdgeTarget(t)
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	pub := priv.Public().(ed25519.PublicKey)
	var fetches atomic.Int64
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		fmt.Fprintf(w, `{"keys":[{"kty":"OKP","crv":"Ed25519","x":%q}]}`, base64.RawURLEncoding.EncodeToString(pub))
	}))
	defer jwks.Close()
	routes := func(burst int) string {
		return fmt.Sprintf(`  - name: fashn
    path: /hooks/fashn
    provider: fashn
    targets: [app]
    insecure: true
    rate_limit: {per_ip: 0.001, per_ip_burst: %d}
  - name: fal
    path: /hooks/fal
    provider: fal
    targets: [app]
    verify: {type: fal, jwks_url: %s}
`, burst, jwks.URL)
	}
	path := edgeConfig(t, et.url, "", routes(1))
	p := startProc(t, nil, "serve", "-config", path)
	admin := p.adminURL(t)
	reload := func() {
		t.Helper()
		resp, err := http.Post(admin+"/v1/reload", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("reload: %d %s", resp.StatusCode, body)
		}
	}
	n := 0
	postFashn := func() int {
		n++
		return send(t, p.url()+"/hooks/fashn", fmt.Sprintf(`{"id":"r-%d","status":"completed"}`, n), nil)
	}
	postFal := func() int {
		n++
		body := fmt.Sprintf(`{"request_id":"req-%d","status":"OK"}`, n)
		ts := strconv.FormatInt(time.Now().Unix(), 10)
		sum := sha256.Sum256([]byte(body))
		msg := fmt.Sprintf("req-%d\nuser-1\n%s\n%s", n, ts, hex.EncodeToString(sum[:]))
		return send(t, p.url()+"/hooks/fal", body, map[string]string{
			"X-Fal-Webhook-Request-Id": fmt.Sprintf("req-%d", n), "X-Fal-Webhook-User-Id": "user-1",
			"X-Fal-Webhook-Timestamp": ts, "X-Fal-Webhook-Signature": hex.EncodeToString(ed25519.Sign(priv, []byte(msg))),
		})
	}
	if got := postFashn(); got != http.StatusAccepted {
		t.Fatalf("first: %d", got)
	}
	if got := postFashn(); got != http.StatusTooManyRequests {
		t.Fatalf("second, over the burst: %d", got)
	}
	if got := postFal(); got != http.StatusAccepted {
		t.Fatalf("fal: %d", got)
	}
	if fetches.Load() != 1 {
		t.Fatalf("%d JWKS fetches, want 1", fetches.Load())
	}

	// Unchanged routes; a target setting changes, so the reload does something.
	writeFile(t, path, strings.Replace(mustRead(t, path), "timeout: 5s", "timeout: 6s", 1))
	reload()
	if got := postFashn(); got != http.StatusTooManyRequests {
		t.Errorf("after a reload that left rate_limit alone: %d, want 429 (the bucket refilled)", got)
	}
	if got := postFal(); got != http.StatusAccepted {
		t.Errorf("fal after the reload: %d", got)
	}
	if fetches.Load() != 1 {
		t.Errorf("%d JWKS fetches after the reload, want still 1 (the cache was emptied)", fetches.Load())
	}

	// A changed rate limit is a new one.
	writeFile(t, path, strings.Replace(mustRead(t, path), "per_ip_burst: 1", "per_ip_burst: 2", 1))
	reload()
	if got := postFashn(); got != http.StatusAccepted {
		t.Errorf("after per_ip_burst changed: %d, want 202", got)
	}
}

// While Redis does not answer, the first webhook waits for the store's timeout and gets a 503;
// those after it get their 503 at once, not after the same wait, and none gets a 2xx. Once Redis
// answers a probe again, webhooks are accepted.
func TestBinaryStoreDownAnswersAtOnce(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	et := newEdgeTarget(t)
	cfg := edgeConfig(t, et.url, fmt.Sprintf("store: {type: redis, redis: {url: \"redis://%s/0\", read_timeout: 1m, write_timeout: 1m}}", srv.Addr), `  - name: fashn
    path: /hooks/fashn
    provider: fashn
    targets: [app]
    insecure: true
    rate_limit: {per_ip: 100, shared: true}
`)
	p := startProc(t, nil, "serve", "-config", cfg)
	if got := send(t, p.url()+"/hooks/fashn", `{"id":"before","status":"completed"}`, nil); got != http.StatusAccepted {
		t.Fatalf("with Redis up: %d", got)
	}
	admin := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer admin.Close()
	// Redis keeps its connections but answers nobody, for 20 s: the relay's 10 s store timeout is
	// the first webhook's wait.
	if err := admin.Do(context.Background(), "CLIENT", "PAUSE", "20000", "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	if got := send(t, p.url()+"/hooks/fashn", `{"id":"first","status":"completed"}`, nil); got != http.StatusServiceUnavailable {
		t.Fatalf("first webhook with Redis paused: %d, want 503", got)
	}
	// Far less than the store timeout: without the breaker each of these would wait 10 s.
	quick := &http.Client{Timeout: 5 * time.Second}
	for i := range 5 {
		resp, err := quick.Post(p.url()+"/hooks/fashn", "application/json", strings.NewReader(fmt.Sprintf(`{"id":"down-%d","status":"completed"}`, i)))
		if err != nil {
			t.Fatalf("webhook %d while the store is known down was not answered at once: %v", i, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("webhook %d while the store is known down: %d (Retry-After %q), want 503 with Retry-After", i, resp.StatusCode, resp.Header.Get("Retry-After"))
		}
	}
	waitUntil(t, "a webhook accepted once Redis answers", func() bool {
		return send(t, p.url()+"/hooks/fashn", `{"id":"after","status":"completed"}`, nil) == http.StatusAccepted
	})
	waitUntil(t, "the two accepted webhooks delivered", func() bool { return et.count() == 2 })
}

// The port-80 listener redirects to HTTPS only the configured domains; any other Host gets 421,
// not a redirect to wherever it names.
func TestBinaryACMERedirectOnlyConfiguredDomains(t *testing.T) {
	deadAddr := acmetest.ClosingAddr(t)
	cfg := edgeConfig(t, "http://127.0.0.1:1", "tls:\n  mode: acme\n  acme:\n    domains: [hooks.relay.test]\n"+
		"    ca: https://"+deadAddr+"/directory\n    http_listen: 127.0.0.1:0", `  - name: fashn
    path: /hooks/fashn
    provider: fashn
    targets: [app]
    insecure: true
`)
	p := startProc(t, nil, "serve", "-config", cfg)
	httpAddr := p.bound.HTTPListen // the ready file comes after the port-80 listener is up
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for host, want := range map[string]int{
		"hooks.relay.test": http.StatusPermanentRedirect, "Hooks.Relay.Test:80": http.StatusPermanentRedirect,
		"evil.example": http.StatusMisdirectedRequest, "127.0.0.1": http.StatusMisdirectedRequest,
		"hooks.relay.test.evil.example": http.StatusMisdirectedRequest,
	} {
		req, _ := http.NewRequest(http.MethodGet, "http://"+httpAddr+"/hooks/fashn", nil)
		req.Host = host
		resp, err := noFollow.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		loc := resp.Header.Get("Location")
		if resp.StatusCode != want || (want == http.StatusPermanentRedirect) != strings.HasPrefix(loc, "https://hooks.relay.test") {
			t.Errorf("Host %s: %d Location %q, want %d", host, resp.StatusCode, loc, want)
		}
	}
}
