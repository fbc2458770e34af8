// Package acmetest runs a real ACME CA in the test process: Pebble's own packages (ca, va, wfe,
// db) behind an httptest TLS server, with a DNS server for its validation authority that answers
// 127.0.0.1 for every name. The validation authority connects to two listeners of this package,
// which forward each connection to the server under test (see Route), so that server can bind
// port 0 and every port is held by whoever uses it. A whole issuance takes about a second.
package acmetest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
	"github.com/miekg/dns"
)

// CA is a running Pebble.
type CA struct {
	// Directory is the ACME directory URL.
	Directory string
	// ServerRootsFile holds the roots of the CA's own HTTPS endpoint as PEM, for the ACME client.
	ServerRootsFile string
	// IssuerRoots trusts the certificates the CA issues.
	IssuerRoots *x509.CertPool
	// HTTPPort and TLSPort are where the validation authority connects for HTTP-01 and
	// TLS-ALPN-01 on 127.0.0.1: listeners of this package that forward to the addresses Route set.
	HTTPPort, TLSPort int

	orders atomic.Int64
	routed chan struct{} // closed by the first Route
	once   sync.Once
	mu     sync.Mutex
	route  [2]string // HTTP-01 and TLS-ALPN-01 destinations
}

// Route sends the validation authority's HTTP-01 connections to httpAddr and its TLS-ALPN-01
// connections to tlsAddr ("": refused). Until the first call, validations wait: a test can start
// its servers on port 0 in any order and route once they are all listening, so no validation
// meets a server that is not up yet.
func (c *CA) Route(httpAddr, tlsAddr string) {
	c.mu.Lock()
	c.route = [2]string{httpAddr, tlsAddr}
	c.mu.Unlock()
	c.once.Do(func() { close(c.routed) })
}

// Orders counts the new-order requests the CA received.
func (c *CA) Orders() int { return int(c.orders.Load()) }

// Options for Start.
type Options struct {
	// Log receives Pebble's log; nil discards it.
	Log io.Writer
}

// Start runs a CA until the test ends. It sets environment variables (PEBBLE_VA_NOSLEEP), so the
// test must not be parallel.
func Start(t testing.TB, opt Options) *CA {
	t.Helper()
	t.Setenv("PEBBLE_VA_NOSLEEP", "1")      // validate at once instead of after up to 5 s
	t.Setenv("PEBBLE_WFE_NONCEREJECT", "0") // no deliberate bad-nonce rejections
	if opt.Log == nil {
		opt.Log = io.Discard
	}
	logger := log.New(opt.Log, "pebble ", log.LstdFlags)
	c := &CA{routed: make(chan struct{})}
	dnsAddr := serveDNS(t)
	c.HTTPPort = c.forward(t, 0)
	c.TLSPort = c.forward(t, 1)

	store := db.NewMemoryStore()
	profiles := map[string]ca.Profile{"default": {Description: "default"}}
	authority := ca.New(logger, store, "", "ecdsa", 0, 1, profiles)
	validator := va.New(logger, c.HTTPPort, c.TLSPort, false, dnsAddr, store)
	front := wfe.New(logger, store, validator, authority, nil, false, false, 0, 0)

	h := front.Handler()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/order-plz" && r.Method == http.MethodPost {
			c.orders.Add(1)
		}
		h.ServeHTTP(w, r)
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)

	c.Directory = srv.URL + wfe.DirectoryPath
	c.ServerRootsFile = filepath.Join(t.TempDir(), "acme-server-roots.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(c.ServerRootsFile, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	c.IssuerRoots = x509.NewCertPool()
	c.IssuerRoots.AddCert(authority.GetRootCert(0).Cert)
	return c
}

// serveDNS answers A 127.0.0.1 for every name, and nothing for other types (no IPv6: servers
// under test listen on 127.0.0.1), over TCP (as Pebble's validation authority asks) on a port it
// holds until the test ends.
func serveDNS(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{Listener: ln, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		for _, q := range r.Question {
			if q.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{A: net.IPv4(127, 0, 0, 1),
					Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET}})
			}
		}
		_ = w.WriteMsg(m)
	})}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return ln.Addr().String()
}

// forward listens on a port of 127.0.0.1 until the test ends and pipes each connection to
// route[which], waiting for Route first.
func (c *CA) forward(t testing.TB, which int) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	t.Cleanup(func() { close(done); ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { c.pipe(conn, which, done) })
		}
	})
	return ln.Addr().(*net.TCPAddr).Port
}

func (c *CA) pipe(conn net.Conn, which int, done chan struct{}) {
	defer conn.Close()
	select {
	case <-c.routed:
	case <-done:
		return
	}
	c.mu.Lock()
	to := c.route[which]
	c.mu.Unlock()
	if to == "" {
		return
	}
	up, err := net.Dial("tcp", to)
	if err != nil {
		return
	}
	defer up.Close()
	copied := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		copied <- struct{}{}
	}
	go cp(up, conn)
	go cp(conn, up)
	for range 2 {
		select {
		case <-copied:
		case <-done:
			return // the deferred closes end the copies
		}
	}
}

// ClosingAddr is a loopback address that accepts TCP connections and closes them at once until
// the test ends: a server that cannot be reached, whose port nobody else can take meanwhile.
func ClosingAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()
	return ln.Addr().String()
}

// SelfSigned makes a certificate for names valid until notAfter and its key, both PEM, for tests
// of static certificates.
func SelfSigned(t testing.TB, notAfter time.Time, names ...string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}

// PrivateCA is a private certificate authority, as internal services use, for tests of TLS to
// targets: it issues server certificates and client certificates (mutual TLS).
type PrivateCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	PEM  []byte // the root certificate
}

// NewPrivateCA makes a root valid for a day.
func NewPrivateCA(t testing.TB, name string) *PrivateCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &PrivateCA{cert: cert, key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// Pool is a certificate pool holding only the root.
func (c *PrivateCA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.cert)
	return p
}

// Issue makes a certificate for names (DNS names or IP addresses) signed by the root, with its
// key, both PEM: a client certificate when client is true, else a server certificate.
func (c *PrivateCA) Issue(t testing.TB, client bool, names ...string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: names[0]},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	if client {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}
