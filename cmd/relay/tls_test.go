package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hookrelay/hookrelay/relay/redistest"
	"github.com/hookrelay/hookrelay/relay/tlsedge/acmetest"
)

// tlsPair writes a certificate and key for a.relay.test to dir and returns their paths.
func tlsPair(t *testing.T, dir, name string, notAfter time.Time) (certFile, keyFile string) {
	t.Helper()
	cert, key := acmetest.SelfSigned(t, notAfter, "a.relay.test")
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	writeFile(t, certFile, string(cert))
	writeFile(t, keyFile, string(key))
	return certFile, keyFile
}

func TestTLSConfigDefaults(t *testing.T) {
	c, _, err := parseConfig([]byte(minimal), "test.yaml", io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.TLS.Mode != "off" {
		t.Errorf("tls.mode defaults to %q, want off", c.TLS.Mode)
	}
	// YAML 1.1 would read an unquoted off as false; the key takes it as the word.
	c, _, err = parseConfig([]byte("tls:\n  mode: off\n"+minimal), "test.yaml", io.Discard)
	if err != nil || c.TLS.Mode != "off" {
		t.Fatalf("mode: off = %v, %+v", err, c)
	}
	c, _, err = parseConfig([]byte("tls:\n  mode: acme\n  acme:\n    domains: [hooks.example.com]\n"+minimal), "test.yaml", io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.TLS.ACME.CA != "https://acme-v02.api.letsencrypt.org/directory" || c.TLS.ACME.HTTPListen != ":80" {
		t.Errorf("acme defaults: %+v", c.TLS.ACME)
	}
}

func TestTLSConfigErrorsNameThePath(t *testing.T) {
	dir := t.TempDir()
	good, goodKey := tlsPair(t, dir, "good", time.Now().Add(24*time.Hour))
	_, otherKey := tlsPair(t, dir, "other", time.Now().Add(24*time.Hour))
	expired, expiredKey := tlsPair(t, dir, "expired", time.Now().Add(-time.Hour))
	garbage := filepath.Join(dir, "garbage.pem")
	writeFile(t, garbage, "not a certificate\n")
	files := func(cert, key string) string {
		return fmt.Sprintf("tls:\n  mode: files\n  cert_file: %s\n  key_file: %s\n", cert, key)
	}
	acme := func(extra string) string {
		return "tls:\n  mode: acme\n  acme:\n" + extra
	}
	for _, tc := range []struct {
		name string
		yaml string
		want []string
	}{
		{"bad mode", "tls:\n  mode: on\n", []string{`tls.mode: "on" is not off, files or acme`}},
		{"files without files", "tls:\n  mode: files\n", []string{"tls.cert_file: mode files needs", "tls.key_file: mode files needs"}},
		{"cert unreadable", files(filepath.Join(dir, "none.crt"), goodKey), []string{"tls.cert_file: cannot read"}},
		{"key unreadable", files(good, filepath.Join(dir, "none.key")), []string{"tls.key_file: cannot read"}},
		{"cert not PEM", files(garbage, goodKey), []string{"tls.cert_file:", "no PEM CERTIFICATE"}},
		{"key of another certificate", files(good, otherKey), []string{"tls.key_file: is not the key of the certificate", "does not match"}},
		{"key not PEM", files(good, garbage), []string{"tls.key_file:"}},
		{"expired", files(expired, expiredKey), []string{"tls.cert_file: the certificate expired"}},
		{"off with files", "tls:\n  cert_file: " + good + "\n", []string{"tls.mode: off, but certificates are configured"}},
		{"acme without domains", acme("    email: ops@example.com\n"), []string{"tls.acme.domains: mode acme needs at least one"}},
		{"acme IP", acme("    domains: [192.0.2.1]\n"), []string{"tls.acme.domains[0]:", "IP address"}},
		{"acme wildcard", acme("    domains: [hooks.example.com, '*.example.com']\n"), []string{"tls.acme.domains[1]:", "DNS-01"}},
		{"acme not a name", acme("    domains: [hooks_example.com]\n"), []string{"tls.acme.domains[0]:", "not allowed"}},
		{"acme single label", acme("    domains: [hooks]\n"), []string{"tls.acme.domains[0]:", "fully qualified"}},
		{"acme localhost", acme("    domains: [relay.localhost]\n"), []string{"tls.acme.domains[0]:", "internal name"}},
		{"acme duplicate", acme("    domains: [a.example.com, A.example.com]\n"), []string{"tls.acme.domains[1]:", "twice"}},
		{"acme email", acme("    domains: [a.example.com]\n    email: ops\n"), []string{"tls.acme.email:", "not an email address"}},
		{"acme email with name", acme("    domains: [a.example.com]\n    email: 'Ops <ops@example.com>'\n"), []string{"tls.acme.email:"}},
		{"acme http CA", acme("    domains: [a.example.com]\n    ca: http://ca.example.com/dir\n"), []string{"tls.acme.ca:", "https://"}},
		{"acme roots unreadable", acme("    domains: [a.example.com]\n    trusted_roots_file: /nonexistent/roots.pem\n"), []string{"tls.acme.trusted_roots_file: cannot read"}},
		{"acme roots not PEM", acme("    domains: [a.example.com]\n    trusted_roots_file: " + garbage + "\n"), []string{"tls.acme.trusted_roots_file:", "no PEM certificates"}},
		{"acme http_listen", acme("    domains: [a.example.com]\n    http_listen: '80'\n"), []string{"tls.acme.http_listen:", "not host:port"}},
		{"acme http_listen port", acme("    domains: [a.example.com]\n    http_listen: ':99999'\n"), []string{"tls.acme.http_listen:", "no port"}},
		{"acme with cert_file", "tls:\n  mode: acme\n  cert_file: " + good + "\n  acme:\n    domains: [a.example.com]\n", []string{"tls.cert_file: set, but tls.mode is acme"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := parseConfig([]byte(tc.yaml+minimal), "test.yaml", io.Discard)
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
	// The good pair, and a complete ACME section, pass.
	for _, y := range []string{
		files(good, goodKey),
		acme("    domains: [hooks.example.com, xn--bcher-kva.example.com]\n    email: ops@example.com\n" +
			"    ca: https://acme-staging-v02.api.letsencrypt.org/directory\n    http_listen: 'off'\n"),
		acme("    domains: [hooks.example.com]\n    http_listen: 127.0.0.1:0\n"), // any free port: the ready file tells
	} {
		if _, _, err := parseConfig([]byte(y+minimal), "test.yaml", io.Discard); err != nil {
			t.Errorf("valid tls section refused: %v\n%s", err, y)
		}
	}
}

// httpsTo is a client that reaches addr for any URL, trusting roots, naming serverName.
func httpsTo(addr, serverName string, tc *tls.Config) *http.Client {
	tc.ServerName = serverName
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: tc, ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}}
}

// The real binary gets its certificate from a real ACME CA (Pebble, in this test process), by
// HTTP-01 on its port-80 listener or by TLS-ALPN-01 on its main listener, becomes ready, and
// accepts a webhook over HTTPS (HTTP/2) that reaches the target.
func TestBinaryACME(t *testing.T) {
	for _, challenge := range []string{"http-01", "tls-alpn-01"} {
		t.Run(challenge, func(t *testing.T) {
			jt := newJobTarget(t)
			ca := acmetest.Start(t, acmetest.Options{})
			dir := t.TempDir()
			httpListen := "'off'"
			if challenge == "http-01" {
				httpListen = "127.0.0.1:0"
			}
			path := writeConfig(t, dir, jt.srv.URL, "")
			writeFile(t, path, mustRead(t, path)+fmt.Sprintf("tls:\n  mode: acme\n  acme:\n    domains: [hooks.relay.test]\n    email: ops@relay.test\n"+
				"    ca: %s\n    trusted_roots_file: %s\n    http_listen: %s\n", ca.Directory, ca.ServerRootsFile, httpListen))

			p := startProc(t, nil, "serve", "-config", path)
			if (p.bound.HTTPListen != "") != (challenge == "http-01") {
				t.Fatalf("ready file: http_listen %q with %s", p.bound.HTTPListen, challenge)
			}
			ca.Route(p.bound.HTTPListen, p.bound.Listen)
			admin := p.adminURL(t)
			waitUntil(t, "/readyz to report ready", func() bool {
				resp, err := http.Get(admin + "/readyz")
				if err != nil {
					return false
				}
				resp.Body.Close()
				return resp.StatusCode == http.StatusOK
			})
			client := httpsTo(p.bound.Listen, "hooks.relay.test", &tls.Config{RootCAs: ca.IssuerRoots})
			resp, err := client.Post("https://hooks.relay.test/hooks/fashn", "application/json",
				strings.NewReader(`{"id":"job-tls-1","status":"completed","output":["x"]}`))
			if err != nil {
				t.Fatalf("webhook over HTTPS: %v\n%s", err, p.logs())
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted || resp.ProtoMajor != 2 {
				t.Fatalf("got %d over %s: %s", resp.StatusCode, resp.Proto, body)
			}
			waitUntil(t, "the delivery", func() bool { return len(jt.snapshot()["job-tls-1"]) == 1 })
			if !strings.Contains(p.logs(), `"msg":"tls: certificate obtained"`) {
				t.Errorf("the log does not say the certificate was obtained:\n%s", p.logs())
			}
		})
	}
}

// A CA that cannot be reached: the relay runs, says so clearly, and is not ready.
func TestBinaryACMEUnreachableCA(t *testing.T) {
	deadAddr := acmetest.ClosingAddr(t)
	dir := t.TempDir()
	path := writeConfig(t, dir, "http://127.0.0.1:1/", "")
	writeFile(t, path, mustRead(t, path)+"tls:\n  mode: acme\n  acme:\n    domains: [hooks.relay.test]\n"+
		"    ca: https://"+deadAddr+"/directory\n    http_listen: 'off'\n")
	p := startProc(t, nil, "serve", "-config", path)
	admin := p.adminURL(t)
	waitUntil(t, "a clear error in the log", func() bool {
		return strings.Contains(p.logs(), `"msg":"tls: could not obtain a certificate; retrying in the background"`)
	})
	resp, err := http.Get(admin + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("/readyz = %d %s, want 503", resp.StatusCode, body)
	}
	select {
	case err := <-p.done:
		t.Fatalf("the relay exited (%v):\n%s", err, p.logs())
	default:
	}
	resp, err = http.Get(admin + "/healthz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz: %v", err)
	}
	resp.Body.Close()
}

// Static certificates through the binary: relay check accepts the pair and serve answers over
// HTTPS with it.
func TestBinaryTLSFiles(t *testing.T) {
	jt := newJobTarget(t)
	dir := t.TempDir()
	certFile, keyFile := tlsPair(t, dir, "edge", time.Now().Add(24*time.Hour))
	path := writeConfig(t, dir, jt.srv.URL, "")
	writeFile(t, path, mustRead(t, path)+fmt.Sprintf("tls:\n  mode: files\n  cert_file: %s\n  key_file: %s\n", certFile, keyFile))
	if out, code := relayCmd(t, nil, "check", "-config", path); code != 0 || !strings.Contains(out, "mode: files") ||
		!strings.Contains(out, "# tls files: certificate for a.relay.test valid until") {
		t.Fatalf("relay check = %d:\n%s", code, out)
	}
	p := startProc(t, nil, "serve", "-config", path)
	roots, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(roots)
	tc := &tls.Config{RootCAs: pool}
	client := httpsTo(strings.TrimPrefix(p.url(), "http://"), "a.relay.test", tc)
	resp, err := client.Post("https://a.relay.test/hooks/fashn", "application/json",
		strings.NewReader(`{"id":"job-files-1","status":"completed","output":["x"]}`))
	if err != nil {
		t.Fatalf("webhook over HTTPS: %v\n%s", err, p.logs())
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("got %d", resp.StatusCode)
	}
	waitUntil(t, "the delivery", func() bool { return len(jt.snapshot()["job-files-1"]) == 1 })

	// The served certificate's expiry is a metric, to alert on before it runs out.
	block, _ := pem.Decode(roots)
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	resp, err = http.Get(p.adminURL(t) + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	want := fmt.Sprintf(`hookrelay_certificate_expiry_timestamp_seconds{name="a.relay.test"} %v`,
		strconv.FormatFloat(float64(leaf.NotAfter.Unix()), 'g', -1, 64))
	if !strings.Contains(string(metrics), want) {
		t.Errorf("/metrics lacks %s", want)
	}
}

// Two relay processes on one Redis with ACME: one order reaches the CA, both serve the same
// certificate. Only the second is where the CA validates; when the first wins the lock, the second
// answers its challenge from the shared storage. The CA's validations wait until both have written
// their ready files (all listeners up), so none fails because a replica is still starting.
func TestBinaryACMEReplicasShareCertificate(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	ca := acmetest.Start(t, acmetest.Options{})
	var replicas []*proc
	for i := range 2 {
		dir := filepath.Join(t.TempDir(), strconv.Itoa(i))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		// Separate data directories: what they share is Redis.
		path := writeRedisConfig(t, dir, rs.Addr, "http://127.0.0.1:1/", fmt.Sprintf("data_dir: %s\n", dir)+fmt.Sprintf(
			"tls:\n  mode: acme\n  acme:\n    domains: [hooks.relay.test]\n    ca: %s\n    trusted_roots_file: %s\n    http_listen: 127.0.0.1:0\n",
			ca.Directory, ca.ServerRootsFile))
		replicas = append(replicas, startProc(t, nil, "serve", "-config", path))
	}
	ca.Route(replicas[1].bound.HTTPListen, replicas[1].bound.Listen)
	var serials []string
	for i, p := range replicas {
		admin := p.adminURL(t)
		waitUntil(t, "replica ready", func() bool {
			resp, err := http.Get(admin + "/readyz")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		})
		conn, err := tls.Dial("tcp", p.bound.Listen, &tls.Config{RootCAs: ca.IssuerRoots, ServerName: "hooks.relay.test"})
		if err != nil {
			t.Fatalf("replica %d: %v\n%s", i, err, p.logs())
		}
		serials = append(serials, conn.ConnectionState().PeerCertificates[0].SerialNumber.String())
		conn.Close()
	}
	if serials[0] != serials[1] {
		t.Errorf("the replicas serve different certificates: %v", serials)
	}
	if n := ca.Orders(); n != 1 {
		t.Errorf("%d orders reached the CA, want 1", n)
	}
}
