package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
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
}

type acmeConfig struct {
	Domains          []string `yaml:"domains,omitempty"`
	Email            string   `yaml:"email,omitempty"`
	CA               string   `yaml:"ca,omitempty"`
	TrustedRootsFile string   `yaml:"trusted_roots_file,omitempty"`
	// HTTPListen serves HTTP-01 and redirects the rest to HTTPS; "off" disables HTTP-01.
	HTTPListen string `yaml:"http_listen,omitempty"`
}

// applyDefaults shows the edge's defaults (tlsedge), so that check prints what serve runs with,
// and fills the section's own: the listener bound here for HTTP-01.
func (t *tlsConfig) applyDefaults() {
	e := t.edgeConfig()
	t.Mode, t.ACME.CA = e.Mode, e.CA
	if t.Mode == tlsedge.ModeACME && t.ACME.HTTPListen == "" {
		t.ACME.HTTPListen = ":80"
	}
}

// edgeConfig translates the section, tlsedge's defaults applied; serve adds the bound listeners,
// the certificate storage and the logger.
func (t *tlsConfig) edgeConfig() tlsedge.Config {
	return tlsedge.Config{Mode: t.Mode, CertFile: t.CertFile, KeyFile: t.KeyFile, Domains: t.ACME.Domains,
		Email: t.ACME.Email, CA: t.ACME.CA, TrustedRootsFile: t.ACME.TrustedRootsFile}.WithDefaults()
}

// validate reports problems under tls: the edge's own (tlsedge.Check, which reads the files), and
// those of the HTTP-01 listener, which is bound here.
func (t *tlsConfig) validate(p *problems) {
	p.addErrs("tls", tlsedge.Check(t.edgeConfig()))
	if l := t.ACME.HTTPListen; t.Mode == tlsedge.ModeACME && l != "off" {
		if _, port, err := net.SplitHostPort(l); err != nil {
			p.add("tls.acme.http_listen", "%q is not host:port (default :80, where the CA connects for HTTP-01), or off", l)
		} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			p.add("tls.acme.http_listen", "%q has no port between 0 (any free port) and 65535", l)
		}
	}
}

// summary says in one line how the listener does TLS, for relay check (after validate passed).
func (t *tlsConfig) summary(listen string) string {
	switch t.Mode {
	case tlsedge.ModeFiles:
		pair, err := tlsedge.LoadPair(t.CertFile, t.KeyFile)
		if err != nil {
			return "files: " + err.Error()
		}
		names := cmp.Or(strings.Join(pair.Leaf.DNSNames, ", "), pair.Leaf.Subject.CommonName)
		return fmt.Sprintf("files: certificate for %s valid until %s, reloaded when the files change",
			names, pair.Leaf.NotAfter.UTC().Format(time.RFC3339))
	case tlsedge.ModeACME:
		challenges := "TLS-ALPN-01 on " + listen
		if t.ACME.HTTPListen != "off" {
			challenges = "HTTP-01 on " + t.ACME.HTTPListen + ", " + challenges
		}
		return fmt.Sprintf("acme: %s from %s (%s)", strings.Join(t.ACME.Domains, ", "), t.ACME.CA, challenges)
	}
	return "off: plain HTTP (terminate TLS in front, and list that proxy in trusted_proxies)"
}

// newEdge builds the TLS edge of the tls section; nil when mode is off. listenAddr and httpAddr
// are the bound main and HTTP-01 listeners ("" when off), where the edge answers challenges.
func newEdge(cfg *fileConfig, log *slog.Logger, listenAddr, httpAddr string) (*tlsedge.Edge, error) {
	if cfg.TLS.Mode == tlsedge.ModeOff {
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
		context.AfterFunc(ctx, func() { _ = srv.Close() })
		log.Info("tls: HTTP-01 and redirect listening", "addr", hln.Addr().String())
	}
	if err := edge.Start(ctx); err != nil {
		return nil, err
	}
	log.Info("tls: on", "mode", cfg.TLS.Mode)
	return tls.NewListener(ln, edge.TLSConfig()), nil
}
