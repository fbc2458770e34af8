package tlsedge_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/hookrelay/hookrelay/relay"
	"github.com/hookrelay/hookrelay/relay/tlsedge"
	"github.com/hookrelay/hookrelay/relay/tlsedge/acmetest"
)

// served is the certificate a client sees when it connects to ln's address.
func served(t *testing.T, addr string, roots *x509.CertPool) *x509.Certificate {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: "a.relay.test"})
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

func writePair(t *testing.T, certFile, keyFile string, cert, key []byte) {
	t.Helper()
	// Both written under other names and renamed, as a certificate manager would.
	for _, f := range []struct {
		path string
		data []byte
	}{{certFile, cert}, {keyFile, key}} {
		if err := os.WriteFile(f.path+".tmp", f.data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(f.path+".tmp", f.path); err != nil {
			t.Fatal(err)
		}
	}
}

// A replaced pair is served without a restart; a broken replacement is logged and the previous
// certificate kept.
func TestFilesReloadReplacedPair(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	expA := time.Now().Add(48 * time.Hour).Truncate(time.Second)
	certA, keyA := acmetest.SelfSigned(t, expA, "a.relay.test")
	writePair(t, certFile, keyFile, certA, keyA)

	logs := &syncBuffer{}
	edge, err := tlsedge.New(tlsedge.Config{Mode: tlsedge.ModeFiles, CertFile: certFile, KeyFile: keyFile,
		ReloadInterval: 20 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := edge.Start(ctx); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serve(t, tls.NewListener(ln, edge.TLSConfig()), nil)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(certA)
	if got := served(t, ln.Addr().String(), roots); !got.NotAfter.Equal(expA) {
		t.Fatalf("served certificate expires %v, want %v", got.NotAfter, expA)
	}
	if err := edge.Ready(ctx); err != nil {
		t.Errorf("Ready = %v", err)
	}

	expB := expA.Add(24 * time.Hour)
	certB, keyB := acmetest.SelfSigned(t, expB, "a.relay.test", "b.relay.test")
	roots.AppendCertsFromPEM(certB)
	writePair(t, certFile, keyFile, certB, keyB)
	waitFor(t, "the replaced pair to be served", func() bool { return served(t, ln.Addr().String(), roots).NotAfter.Equal(expB) })
	if got := edge.NotAfter(); !got["a.relay.test"].Equal(expB) || !got["b.relay.test"].Equal(expB) || len(got) != 2 {
		t.Errorf("NotAfter = %v, want both names at %v", got, expB)
	}

	// A new certificate without its key: logged once, the old pair kept. (The pair caught
	// half-written above may have been logged already.)
	before := strings.Count(logs.String(), "do not load")
	certC, _ := acmetest.SelfSigned(t, expB.Add(time.Hour), "a.relay.test")
	if err := os.WriteFile(certFile+".tmp", certC, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(certFile+".tmp", certFile); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the broken pair to be logged", func() bool {
		return strings.Count(logs.String(), "do not load; keeping the current certificate") > before
	})
	if got := served(t, ln.Addr().String(), roots); !got.NotAfter.Equal(expB) {
		t.Errorf("after a broken replacement the served certificate expires %v, want the previous one (%v)", got.NotAfter, expB)
	}
	looks := edge.FileLooks()
	waitFor(t, "three more looks at the unchanged broken pair", func() bool { return edge.FileLooks() >= looks+3 })
	if n := strings.Count(logs.String(), "do not load") - before; n != 1 {
		t.Errorf("the broken pair was logged %d times, want once", n)
	}
}

func TestFilesNewRefusesBrokenPair(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	cert, _ := acmetest.SelfSigned(t, time.Now().Add(time.Hour), "a.relay.test")
	_, otherKey := acmetest.SelfSigned(t, time.Now().Add(time.Hour), "a.relay.test")
	writePair(t, certFile, keyFile, cert, otherKey)
	if _, err := tlsedge.New(tlsedge.Config{Mode: tlsedge.ModeFiles, CertFile: certFile, KeyFile: keyFile}); err == nil ||
		!strings.Contains(err.Error(), "private key does not match public key") {
		t.Errorf("New with a mismatched pair = %v", err)
	}
	expired, key := acmetest.SelfSigned(t, time.Now().Add(-time.Minute), "a.relay.test")
	writePair(t, certFile, keyFile, expired, key)
	if _, err := tlsedge.New(tlsedge.Config{Mode: tlsedge.ModeFiles, CertFile: certFile, KeyFile: keyFile}); err == nil ||
		!strings.Contains(err.Error(), "cert_file: the certificate expired at") {
		t.Errorf("New with an expired certificate = %v", err)
	}
	// A certificate that expires while the edge runs makes it unready.
	now := time.Now()
	cert, key = acmetest.SelfSigned(t, now.Add(time.Minute), "a.relay.test")
	writePair(t, certFile, keyFile, cert, key)
	edge, err := tlsedge.New(tlsedge.Config{Mode: tlsedge.ModeFiles, CertFile: certFile, KeyFile: keyFile, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	if err := edge.Ready(context.Background()); err != nil {
		t.Errorf("Ready before expiry = %v", err)
	}
	now = now.Add(2 * time.Minute)
	if err := edge.Ready(context.Background()); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("Ready with an expired certificate = %v", err)
	}
}

// Check names each problem's field as the tls section spells it, and New refuses what Check
// refuses.
func TestCheck(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	cert, key := acmetest.SelfSigned(t, time.Now().Add(time.Hour), "a.relay.test")
	writePair(t, certFile, keyFile, cert, key)
	acme := func(c tlsedge.Config) tlsedge.Config {
		c.Mode, c.ListenAddr, c.Storage = tlsedge.ModeACME, "127.0.0.1:0", &certmagic.FileStorage{Path: dir}
		return c
	}
	for _, tc := range []struct {
		name string
		cfg  tlsedge.Config
		want []string // "field: message start", in order
	}{
		{"unknown mode", tlsedge.Config{Mode: "on"}, []string{`mode: "on" is not off, files or acme`}},
		{"off with a certificate", tlsedge.Config{CertFile: certFile}, []string{"mode: off, but certificates are configured"}},
		{"cert without key", tlsedge.Config{Mode: tlsedge.ModeFiles, CertFile: certFile}, []string{"key_file: mode files needs the private key's PEM file"}},
		{"cert unreadable", tlsedge.Config{Mode: tlsedge.ModeFiles, CertFile: filepath.Join(dir, "none.pem"), KeyFile: keyFile},
			[]string{"cert_file: cannot read: open " + filepath.Join(dir, "none.pem")}},
		{"files with domains", tlsedge.Config{Mode: tlsedge.ModeFiles, CertFile: certFile, KeyFile: keyFile, Domains: []string{"a.example.com"}},
			[]string{"acme: set, but tls.mode is files"}},
		{"acme with a certificate", acme(tlsedge.Config{CertFile: certFile, Domains: []string{"a.example.com"}}),
			[]string{"cert_file: set, but tls.mode is acme"}},
		{"acme, every field wrong", acme(tlsedge.Config{Domains: []string{"a.example.com", "A.example.com", "10.0.0.1"}, Email: "ops",
			CA: "http://ca.example.com/dir", TrustedRootsFile: certFile + ".missing"}),
			[]string{`acme.domains[1]: "A.example.com" is listed twice`, `acme.domains[2]: "10.0.0.1" is an IP address`,
				`acme.email: "ops" is not an email address`, `acme.ca: "http://ca.example.com/dir" is not an https://`,
				"acme.trusted_roots_file: cannot read: open " + certFile + ".missing"}},
		{"acme without domains", acme(tlsedge.Config{}), []string{"acme.domains: mode acme needs at least one domain name"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tlsedge.Check(tc.cfg)
			var got []string
			for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
				fe, ok := errors.AsType[*relay.FieldError](e)
				if !ok {
					t.Fatalf("%v is not a relay.FieldError", e)
				}
				got = append(got, fe.Error())
			}
			if len(got) != len(tc.want) {
				t.Fatalf("Check = %q, want %q", got, tc.want)
			}
			for i, w := range tc.want {
				if !strings.HasPrefix(got[i], w) {
					t.Errorf("problem %d = %q, want it to start %q", i, got[i], w)
				}
			}
			if _, nerr := tlsedge.New(tc.cfg); nerr == nil || !strings.Contains(nerr.Error(), got[0]) {
				t.Errorf("New = %v, want %q", nerr, got[0])
			}
		})
	}
	for _, c := range []tlsedge.Config{{}, {Mode: tlsedge.ModeFiles, CertFile: certFile, KeyFile: keyFile},
		acme(tlsedge.Config{Domains: []string{"hooks.example.com"}, Email: "ops@example.com"})} {
		if err := tlsedge.Check(c); err != nil {
			t.Errorf("Check(%+v) = %v", c, err)
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// WithDefaults fills only zero fields; the CA is ACME's alone.
func TestConfigDefaults(t *testing.T) {
	acme := tlsedge.Config{Mode: tlsedge.ModeACME}.WithDefaults()
	if acme.CA != "https://acme-v02.api.letsencrypt.org/directory" || acme.ReloadInterval != 2*time.Second || acme.Logger == nil || acme.Now == nil {
		t.Errorf("acme: %+v", acme)
	}
	if c := (tlsedge.Config{Mode: tlsedge.ModeACME, CA: "https://ca.example/dir"}).WithDefaults(); c.CA != "https://ca.example/dir" {
		t.Errorf("a given CA replaced by %q", c.CA)
	}
	if c := (tlsedge.Config{Mode: tlsedge.ModeFiles}).WithDefaults(); c.CA != "" {
		t.Errorf("files mode got a CA: %q", c.CA)
	}
}
