package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/mail"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/hookrelay/hookrelay/relay/redisstore"
	"github.com/hookrelay/hookrelay/relay/tlsedge"
)

// tlsConfig is the tls section: TLS at the relay's own listener.
type tlsConfig struct {
	Mode     string     `yaml:"mode"` // off | files | acme
	CertFile string     `yaml:"cert_file,omitempty"`
	KeyFile  string     `yaml:"key_file,omitempty"`
	ACME     acmeConfig `yaml:"acme,omitempty"`

	leaf *x509.Certificate // files: read by validate
}

type acmeConfig struct {
	Domains          []string `yaml:"domains,omitempty"`
	Email            string   `yaml:"email,omitempty"`
	CA               string   `yaml:"ca,omitempty"`
	TrustedRootsFile string   `yaml:"trusted_roots_file,omitempty"`
	// HTTPListen serves HTTP-01 and redirects the rest to HTTPS; "off" disables HTTP-01.
	HTTPListen string `yaml:"http_listen,omitempty"`

	roots *x509.CertPool // read by validate
}

// applyDefaults fills the section's own defaults (the listener here binds http_listen) and shows
// the edge's (tlsedge), so that check prints what serve runs with.
func (t *tlsConfig) applyDefaults() {
	if t.Mode == "" {
		t.Mode = "off"
	}
	if t.Mode == "acme" {
		t.ACME.CA = t.edgeConfig().CA
		if t.ACME.HTTPListen == "" {
			t.ACME.HTTPListen = ":80"
		}
	}
}

// edgeConfig translates the section, tlsedge's defaults applied; serve adds the bound listeners,
// the certificate storage and the logger.
func (t *tlsConfig) edgeConfig() tlsedge.Config {
	return tlsedge.Config{Mode: t.Mode, CertFile: t.CertFile, KeyFile: t.KeyFile, Domains: t.ACME.Domains,
		Email: t.ACME.Email, CA: t.ACME.CA, TrustedRoots: t.ACME.roots}.WithDefaults()
}

// validate reports problems under tls, reading the files it names. listen is the main listener.
func (t *tlsConfig) validate(p *problems) {
	switch t.Mode {
	case "off":
		if t.CertFile != "" || t.KeyFile != "" || len(t.ACME.Domains) > 0 {
			p.add("tls.mode", "off, but certificates are configured: set mode: files or mode: acme, or remove them")
		}
	case "files":
		t.validateFiles(p)
		if len(t.ACME.Domains) > 0 {
			p.add("tls.acme", "set, but tls.mode is files; set mode: acme or remove it")
		}
	case "acme":
		if t.CertFile != "" || t.KeyFile != "" {
			p.add("tls.cert_file", "set, but tls.mode is acme (certificates come from the CA); remove cert_file and key_file")
		}
		t.ACME.validate(p)
	default:
		p.add("tls.mode", "%q is not off, files or acme", t.Mode)
	}
}

func (t *tlsConfig) validateFiles(p *problems) {
	if t.CertFile == "" {
		p.add("tls.cert_file", "mode files needs the certificate chain's PEM file")
	}
	if t.KeyFile == "" {
		p.add("tls.key_file", "mode files needs the private key's PEM file")
	}
	if t.CertFile == "" || t.KeyFile == "" {
		return
	}
	certPEM, err := os.ReadFile(t.CertFile)
	if err != nil {
		p.add("tls.cert_file", "cannot read: %v", err)
	}
	if _, kerr := os.ReadFile(t.KeyFile); kerr != nil {
		p.add("tls.key_file", "cannot read: %v", kerr)
		return
	}
	if err != nil {
		return
	}
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		p.add("tls.cert_file", "%s holds no PEM CERTIFICATE block", t.CertFile)
		return
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		p.add("tls.cert_file", "the first certificate does not parse: %v", err)
		return
	}
	if _, err := tlsedge.LoadPair(t.CertFile, t.KeyFile); err != nil {
		p.add("tls.key_file", "is not the key of the certificate in tls.cert_file, or does not parse: %v", err)
		return
	}
	if now := time.Now(); now.After(leaf.NotAfter) {
		p.add("tls.cert_file", "the certificate expired at %s; renew it", leaf.NotAfter.Format(time.RFC3339))
	}
	t.leaf = leaf
}

// summary says in one line how the listener does TLS, for relay check.
func (t *tlsConfig) summary(listen string) string {
	switch t.Mode {
	case "files":
		names := strings.Join(t.leaf.DNSNames, ", ")
		if names == "" {
			names = t.leaf.Subject.CommonName
		}
		return fmt.Sprintf("files: certificate for %s valid until %s, reloaded when the files change",
			names, t.leaf.NotAfter.UTC().Format(time.RFC3339))
	case "acme":
		challenges := "TLS-ALPN-01 on " + listen
		if t.ACME.HTTPListen != "off" {
			challenges = "HTTP-01 on " + t.ACME.HTTPListen + ", " + challenges
		}
		return fmt.Sprintf("acme: %s from %s (%s)", strings.Join(t.ACME.Domains, ", "), t.ACME.CA, challenges)
	}
	return "off: plain HTTP (terminate TLS in front, and list that proxy in trusted_proxies)"
}

func (a *acmeConfig) validate(p *problems) {
	if len(a.Domains) == 0 {
		p.add("tls.acme.domains", "mode acme needs at least one domain name, e.g. [hooks.example.com]")
	}
	seen := map[string]bool{}
	for i, d := range a.Domains {
		at := fmt.Sprintf("tls.acme.domains[%d]", i)
		if err := checkDomain(d); err != nil {
			p.add(at, "%q %v", d, err)
		} else if seen[strings.ToLower(d)] {
			p.add(at, "%q is listed twice", d)
		}
		seen[strings.ToLower(d)] = true
	}
	if a.Email != "" {
		if m, err := mail.ParseAddress(a.Email); err != nil || m.Name != "" || m.Address != a.Email ||
			!strings.Contains(a.Email[strings.LastIndex(a.Email, "@")+1:], ".") {
			p.add("tls.acme.email", "%q is not an email address like ops@example.com (the CA writes there about expiring certificates)", a.Email)
		}
	}
	if u, err := url.Parse(a.CA); err != nil || u.Scheme != "https" || u.Host == "" {
		p.add("tls.acme.ca", "%q is not an https:// ACME directory URL (default %s)", a.CA, tlsedge.DefaultCA)
	}
	if a.TrustedRootsFile != "" {
		raw, err := os.ReadFile(a.TrustedRootsFile)
		pool := x509.NewCertPool()
		switch {
		case err != nil:
			p.add("tls.acme.trusted_roots_file", "cannot read: %v", err)
		case !pool.AppendCertsFromPEM(raw):
			p.add("tls.acme.trusted_roots_file", "%s holds no PEM certificates", a.TrustedRootsFile)
		default:
			a.roots = pool
		}
	}
	if a.HTTPListen != "off" {
		if _, port, err := net.SplitHostPort(a.HTTPListen); err != nil {
			p.add("tls.acme.http_listen", "%q is not host:port (default :80, where the CA connects for HTTP-01), or off", a.HTTPListen)
		} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			p.add("tls.acme.http_listen", "%q has no port between 0 (any free port) and 65535", a.HTTPListen)
		}
	}
}

// checkDomain accepts a DNS name a public CA can validate by HTTP-01 or TLS-ALPN-01: no IP
// address, no wildcard (that needs DNS-01, which the relay does not do).
func checkDomain(d string) error {
	if _, err := netip.ParseAddr(d); err == nil {
		return errors.New("is an IP address; ACME here issues for DNS names only")
	}
	if strings.Contains(d, "*") {
		return errors.New("is a wildcard; wildcards need the DNS-01 challenge, which the relay does not support: list each name")
	}
	if len(d) > 253 || !strings.Contains(strings.Trim(d, "."), ".") {
		return errors.New("is not a fully qualified domain name like hooks.example.com")
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("has an invalid label %q", label)
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return fmt.Errorf("has a character %q not allowed in a domain name (use the punycode xn-- form)", r)
			}
		}
	}
	if certmagic.SubjectIsInternal(d) {
		return errors.New("is an internal name (localhost, .local, .internal); a public CA cannot validate it")
	}
	return nil
}

// newEdge builds the TLS edge of the tls section; nil when mode is off. listenAddr and httpAddr
// are the bound main and HTTP-01 listeners ("" when off), where the edge answers challenges.
func newEdge(cfg *fileConfig, log *slog.Logger, listenAddr, httpAddr string) (*tlsedge.Edge, error) {
	if cfg.TLS.Mode == "off" {
		return nil, nil
	}
	ec := cfg.TLS.edgeConfig()
	ec.Logger, ec.ListenAddr, ec.HTTPAddr = log, listenAddr, httpAddr
	switch {
	case ec.Mode != tlsedge.ModeACME:
	case cfg.redis != nil:
		s, err := redisstore.NewCertStorage(cfg.redis, redisstore.CertStorageOptions{Prefix: cfg.redisPrefix()})
		if err != nil {
			return nil, err
		}
		ec.Storage = s
	default:
		ec.Storage = &certmagic.FileStorage{Path: filepath.Join(cfg.DataDir, "certs")}
	}
	return tlsedge.New(ec)
}

// edgeReadyChecks feeds the edge's readiness (a certificate is loaded) into /readyz.
func edgeReadyChecks(edge *tlsedge.Edge) []func(context.Context) error {
	if edge == nil {
		return nil
	}
	return []func(context.Context) error{edge.Ready}
}

// listenHTTP01 binds tls.acme.http_listen when ACME uses it; nil otherwise.
func listenHTTP01(cfg *fileConfig) (net.Listener, error) {
	if cfg.TLS.Mode != "acme" || cfg.TLS.ACME.HTTPListen == "off" {
		return nil, nil
	}
	hln, err := net.Listen("tcp", cfg.TLS.ACME.HTTPListen)
	if err != nil {
		return nil, fmt.Errorf("tls.acme.http_listen: %w (on Linux, ports below 1024 need CAP_NET_BIND_SERVICE; see docs/CONFIGURATION.md \"TLS\")", err)
	}
	return hln, nil
}

// serveEdge starts the edge until ctx is done and returns ln wrapped in TLS; with ACME and
// http_listen it also serves hln, the port-80 listener (HTTP-01, redirect to HTTPS). With TLS off
// it returns ln as it is.
func serveEdge(ctx context.Context, edge *tlsedge.Edge, cfg *fileConfig, ln, hln net.Listener, log *slog.Logger) (net.Listener, error) {
	if edge == nil {
		return ln, nil
	}
	if hln != nil {
		srv := &http.Server{Handler: edge.HTTPHandler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 10 * time.Second,
			WriteTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
		go func() {
			if err := srv.Serve(hln); !errors.Is(err, http.ErrServerClosed) {
				log.Error("tls: the HTTP-01 listener failed", "error", err)
			}
		}()
		go func() {
			<-ctx.Done()
			_ = srv.Close()
		}()
		log.Info("tls: HTTP-01 and redirect listening", "addr", hln.Addr().String())
	}
	if err := edge.Start(ctx); err != nil {
		return nil, err
	}
	log.Info("tls: on", "mode", cfg.TLS.Mode)
	return tls.NewListener(ln, edge.TLSConfig()), nil
}
