// Package acmetest runs a real ACME CA in the test process: Pebble's own packages (ca, va, wfe,
// db) behind an httptest TLS server, with challtestsrv as the DNS server its validation authority
// asks, answering 127.0.0.1 for every name. A whole issuance takes about a second.
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
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/letsencrypt/challtestsrv"
	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
)

// CA is a running Pebble.
type CA struct {
	// Directory is the ACME directory URL.
	Directory string
	// ServerRoots trusts the CA's own HTTPS endpoint (the ACME client needs it); ServerRootsFile
	// holds the same as PEM.
	ServerRoots     *x509.CertPool
	ServerRootsFile string
	// IssuerRoots trusts the certificates the CA issues.
	IssuerRoots *x509.CertPool
	// HTTPPort and TLSPort are where the validation authority connects for HTTP-01 and
	// TLS-ALPN-01 on 127.0.0.1: the relay under test listens there.
	HTTPPort, TLSPort int

	orders atomic.Int64
}

// Orders counts the new-order requests the CA received.
func (c *CA) Orders() int { return int(c.orders.Load()) }

// Options for Start. Zero ports are replaced by free ones.
type Options struct {
	HTTPPort, TLSPort int
	// Log receives Pebble's log; nil discards it.
	Log io.Writer
}

// Start runs a CA until the test ends. It sets environment variables (PEBBLE_VA_NOSLEEP), so the
// test must not be parallel.
func Start(t testing.TB, opt Options) *CA {
	t.Helper()
	t.Setenv("PEBBLE_VA_NOSLEEP", "1")      // validate at once instead of after up to 5 s
	t.Setenv("PEBBLE_WFE_NONCEREJECT", "0") // no deliberate bad-nonce rejections
	if opt.HTTPPort == 0 {
		opt.HTTPPort = FreePort(t)
	}
	if opt.TLSPort == 0 {
		opt.TLSPort = FreePort(t)
	}
	if opt.Log == nil {
		opt.Log = io.Discard
	}
	logger := log.New(opt.Log, "pebble ", log.LstdFlags)

	dnsAddr := "127.0.0.1:" + strconv.Itoa(FreePort(t))
	dns, err := challtestsrv.New(challtestsrv.Config{DNSAddrs: []string{dnsAddr}, Log: logger})
	if err != nil {
		t.Fatalf("challtestsrv: %v", err)
	}
	dns.SetDefaultDNSIPv4("127.0.0.1")
	dns.SetDefaultDNSIPv6("") // the relay listens on 127.0.0.1 only
	dns.Run()
	t.Cleanup(dns.Shutdown)

	store := db.NewMemoryStore()
	profiles := map[string]ca.Profile{"default": {Description: "default"}}
	authority := ca.New(logger, store, "", "ecdsa", 0, 1, profiles)
	validator := va.New(logger, opt.HTTPPort, opt.TLSPort, false, dnsAddr, store)
	front := wfe.New(logger, store, validator, authority, nil, false, false, 0, 0)

	c := &CA{HTTPPort: opt.HTTPPort, TLSPort: opt.TLSPort}
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
	c.ServerRoots = x509.NewCertPool()
	c.ServerRoots.AddCert(srv.Certificate())
	c.ServerRootsFile = filepath.Join(t.TempDir(), "acme-server-roots.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(c.ServerRootsFile, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	c.IssuerRoots = x509.NewCertPool()
	c.IssuerRoots.AddCert(authority.GetRootCert(0).Cert)
	return c
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
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
