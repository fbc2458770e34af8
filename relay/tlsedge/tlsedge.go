// Package tlsedge terminates TLS at the relay's own listener: a certificate and key from files,
// reloaded when they change, or certificates from an ACME CA (certmagic), obtained and renewed in
// the background and shared by replicas through a common certmagic.Storage.
package tlsedge

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"
)

// Modes.
const (
	ModeOff   = "off" // no edge: New refuses it, Check accepts it without certificate settings
	ModeFiles = "files"
	ModeACME  = "acme"
)

// Config configures an Edge.
type Config struct {
	Mode string // ModeOff (default), ModeFiles or ModeACME

	// files
	CertFile, KeyFile string
	// ReloadInterval is how often the files are looked at (stat only); default 2s.
	ReloadInterval time.Duration

	// acme
	Domains          []string
	Email            string
	CA               string // directory URL; default DefaultCA
	TrustedRootsFile string // PEM roots for the CA's own HTTPS; empty: the system roots
	// ListenAddr is the main (TLS) listener's address: TLS-ALPN-01 is answered there.
	ListenAddr string
	// HTTPAddr is the port-80 listener's address for HTTP-01; empty disables HTTP-01.
	HTTPAddr string
	// Storage holds certificates, keys and locks; replicas sharing it share certificates.
	Storage certmagic.Storage

	Logger *slog.Logger     // nil: discard
	Now    func() time.Time // nil: time.Now
}

// DefaultCA is the ACME directory of Let's Encrypt's production CA, Config.CA when empty.
const DefaultCA = certmagic.LetsEncryptProductionCA

// WithDefaults returns cfg with the defaults named on its fields set: New applies it, and the
// configuration layer shows it.
func (cfg Config) WithDefaults() Config {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.ReloadInterval <= 0 {
		cfg.ReloadInterval = 2 * time.Second
	}
	cfg.Mode = cmp.Or(cfg.Mode, ModeOff)
	if cfg.Mode == ModeACME && cfg.CA == "" {
		cfg.CA = DefaultCA
	}
	return cfg
}

// Edge provides the listener's TLS configuration and its readiness.
type Edge struct {
	cfg   Config
	log   *slog.Logger
	files *filePair

	// acme
	magic  *certmagic.Config
	cache  *certmagic.Cache
	issuer *certmagic.ACMEIssuer
	mu     sync.Mutex
	failed map[string]string // domain -> last obtain error, until a certificate arrives
}

// New checks cfg as Check does and builds an Edge. Files mode loads the pair now; ACME mode
// contacts nobody until Start.
func New(cfg Config) (*Edge, error) {
	cfg = cfg.WithDefaults()
	if err := Check(cfg); err != nil {
		return nil, fmt.Errorf("tlsedge: %w", err)
	}
	e := &Edge{cfg: cfg, log: cfg.Logger, failed: map[string]string{}}
	switch cfg.Mode {
	case ModeFiles:
		f, err := newFilePair(cfg.CertFile, cfg.KeyFile, cfg.Logger)
		if err != nil {
			return nil, err
		}
		e.files = f
	case ModeACME:
		if err := e.setupACME(); err != nil {
			return nil, err
		}
	default:
		return nil, errors.New("tlsedge: mode off builds no edge")
	}
	return e, nil
}

func portOf(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("%q has no usable port", addr)
	}
	return host, port, nil
}

func (e *Edge) setupACME() error {
	e.cfg.Domains = slices.Clone(e.cfg.Domains)
	c := e.cfg
	// certmagic keys its cache by the normalised name; Ready and NotAfter look names up there.
	for i, d := range c.Domains {
		c.Domains[i] = strings.ToLower(strings.TrimSuffix(d, "."))
	}
	if c.Storage == nil {
		return errors.New("tlsedge: acme needs a certificate storage")
	}
	host, tlsPort, err := portOf(c.ListenAddr)
	if err != nil {
		return fmt.Errorf("tlsedge: listen address: %w", err)
	}
	roots, err := loadRoots(c.TrustedRootsFile)
	if err != nil {
		return fmt.Errorf("tlsedge: trusted roots: %w", err)
	}
	zl := zapToSlog(e.log)
	// The cache calls back for the config of each certificate; there is one config.
	e.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return e.magic, nil },
		Logger:           zl,
	})
	e.magic = certmagic.New(e.cache, certmagic.Config{
		Storage:           c.Storage,
		Logger:            zl,
		DefaultServerName: c.Domains[0], // clients without SNI still get a certificate
		OnEvent:           e.onEvent,
		OCSP:              certmagic.OCSPConfig{DisableStapling: true}, // the big CAs dropped OCSP
	})
	iss := certmagic.ACMEIssuer{
		CA: c.CA, Email: c.Email, Agreed: true, TrustedRoots: roots, Logger: zl,
		// The solvers "listen" on these; finding our own listeners there (the port taken), they
		// leave the answering to them: HTTP-01 to HTTPHandler, TLS-ALPN-01 to GetCertificate.
		ListenHost: host, AltTLSALPNPort: tlsPort,
	}
	if c.HTTPAddr == "" {
		iss.DisableHTTPChallenge = true
	} else {
		_, httpPort, err := portOf(c.HTTPAddr)
		if err != nil {
			return fmt.Errorf("tlsedge: http address: %w", err)
		}
		iss.AltHTTPPort = httpPort
	}
	e.issuer = certmagic.NewACMEIssuer(e.magic, iss)
	e.magic.Issuers = []certmagic.Issuer{e.issuer}
	return nil
}

// onEvent keeps the last failure per domain for Ready and says clearly in the log what failed.
func (e *Edge) onEvent(_ context.Context, event string, data map[string]any) error {
	name, _ := data["identifier"].(string)
	switch event {
	case "cert_failed":
		err, _ := data["error"].(error)
		msg := fmt.Sprint(err)
		var problem acme.Problem
		if errors.As(err, &problem) {
			msg = problem.Error()
		}
		e.mu.Lock()
		e.failed[name] = msg
		e.mu.Unlock()
		e.log.Error("tls: could not obtain a certificate; retrying in the background",
			"domain", name, "ca", e.issuer.CA, "renewal", data["renewal"], "error", msg)
	case "cert_obtained":
		e.mu.Lock()
		delete(e.failed, name)
		e.mu.Unlock()
		e.log.Info("tls: certificate obtained", "domain", name, "renewal", data["renewal"])
	}
	return nil
}

// Start begins the background work until ctx is done: reloading the files, or obtaining (from
// storage or the CA) and renewing the certificates. It does not wait for a certificate.
func (e *Edge) Start(ctx context.Context) error {
	if e.files != nil {
		go func() {
			t := time.NewTicker(e.cfg.ReloadInterval)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					e.files.reload()
				}
			}
		}()
		return nil
	}
	if err := e.magic.ManageAsync(ctx, e.cfg.Domains); err != nil {
		return fmt.Errorf("tlsedge: manage certificates: %w", err)
	}
	context.AfterFunc(ctx, e.cache.Stop)
	e.log.Info("tls: managing certificates", "domains", e.cfg.Domains, "ca", e.issuer.CA,
		"http_01", !e.issuer.DisableHTTPChallenge, "tls_alpn_01", true)
	return nil
}

// TLSConfig is the main listener's configuration: TLS 1.2 or later, HTTP/2 and HTTP/1.1, and in
// ACME mode the TLS-ALPN-01 protocol.
func (e *Edge) TLSConfig() *tls.Config {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}
	if e.files != nil {
		tc.GetCertificate = e.files.getCertificate
	} else {
		tc.GetCertificate = e.magic.GetCertificate
		tc.NextProtos = append(tc.NextProtos, acmez.ACMETLS1Protocol)
	}
	return tc
}

// HTTPHandler serves the port-80 listener: ACME HTTP-01 challenges (also those another replica
// started, through the shared storage), and a redirect to HTTPS for requests to a configured
// domain. Any other Host is refused (421): the relay would otherwise send a browser wherever the
// request's Host said, an open redirect under our name.
func (e *Edge) HTTPHandler() http.Handler {
	_, tlsPort, _ := portOf(e.cfg.ListenAddr)
	redirect := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		host = strings.ToLower(strings.TrimSuffix(host, "."))
		if !slices.Contains(e.cfg.Domains, host) {
			http.Error(w, "no such domain here", http.StatusMisdirectedRequest)
			return
		}
		if tlsPort != 443 && tlsPort != 0 {
			host = net.JoinHostPort(host, strconv.Itoa(tlsPort))
		}
		// 308 keeps the method and body of a webhook sent to http:// by mistake.
		http.Redirect(w, r, "https://"+host+r.URL.RequestURI(), http.StatusPermanentRedirect)
	})
	if e.issuer == nil {
		return redirect
	}
	return e.issuer.HTTPChallengeHandler(redirect)
}

// Ready fails until there is a current certificate for every domain (files: the pair is not
// expired).
func (e *Edge) Ready(context.Context) error {
	now := e.cfg.Now()
	if e.files != nil {
		return e.files.ready(now)
	}
	var missing []string
	for _, d := range e.cfg.Domains {
		if _, ok := e.notAfter(d, now); ok {
			continue
		}
		e.mu.Lock()
		why := e.failed[d]
		e.mu.Unlock()
		if why == "" {
			why = "being obtained"
		}
		missing = append(missing, d+" ("+why+")")
	}
	if len(missing) > 0 {
		return fmt.Errorf("tls: no certificate yet for %s", strings.Join(missing, ", "))
	}
	return nil
}

// notAfter is the latest expiry among the cached, unexpired certificates for name.
func (e *Edge) notAfter(name string, now time.Time) (time.Time, bool) {
	var best time.Time
	for _, c := range e.cache.AllMatchingCertificates(name) {
		if c.Leaf != nil && now.Before(c.Leaf.NotAfter) && c.Leaf.NotAfter.After(best) {
			best = c.Leaf.NotAfter
		}
	}
	return best, !best.IsZero()
}

// NotAfter gives the expiry of the current certificate for each name it serves (a metric).
// ACME domains without a certificate yet are absent.
func (e *Edge) NotAfter() map[string]time.Time {
	if e.files != nil {
		return e.files.notAfter()
	}
	out := map[string]time.Time{}
	now := e.cfg.Now()
	for _, d := range e.cfg.Domains {
		if t, ok := e.notAfter(d, now); ok {
			out[d] = t
		}
	}
	return out
}
