package tlsedge

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/mail"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/hookrelay/hookrelay/relay"
)

// Check validates cfg as New does, defaults applied, reading the files it names but building
// nothing. Each problem is a relay.FieldError named as the configuration's tls section spells the
// setting (mode, cert_file, acme.domains[1], ...); they are joined. relay check uses it.
func Check(cfg Config) error {
	cfg = cfg.WithDefaults()
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, relay.FieldErrorf(field, format, args...))
	}
	switch cfg.Mode {
	case ModeOff:
		if cfg.CertFile != "" || cfg.KeyFile != "" || len(cfg.Domains) > 0 {
			add("mode", "off, but certificates are configured: set mode: files or mode: acme, or remove them")
		}
	case ModeFiles:
		if len(cfg.Domains) > 0 {
			add("acme", "set, but tls.mode is files; set mode: acme or remove it")
		}
		checkFiles(cfg, add)
	case ModeACME:
		if cfg.CertFile != "" || cfg.KeyFile != "" {
			add("cert_file", "set, but tls.mode is acme (certificates come from the CA); remove cert_file and key_file")
		}
		if len(cfg.Domains) == 0 {
			add("acme.domains", "mode acme needs at least one domain name, e.g. [hooks.example.com]")
		}
		seen := map[string]bool{}
		for i, d := range cfg.Domains {
			if err := checkDomain(d); err != nil {
				add(fmt.Sprintf("acme.domains[%d]", i), "%q %v", d, err)
			} else if seen[strings.ToLower(d)] {
				add(fmt.Sprintf("acme.domains[%d]", i), "%q is listed twice", d)
			}
			seen[strings.ToLower(d)] = true
		}
		if e := cfg.Email; e != "" {
			if m, err := mail.ParseAddress(e); err != nil || m.Name != "" || m.Address != e || !strings.Contains(e[strings.LastIndex(e, "@")+1:], ".") {
				add("acme.email", "%q is not an email address like ops@example.com (the CA writes there about expiring certificates)", e)
			}
		}
		if u, err := url.Parse(cfg.CA); err != nil || u.Scheme != "https" || u.Host == "" {
			add("acme.ca", "%q is not an https:// ACME directory URL (default %s)", cfg.CA, DefaultCA)
		}
		if _, err := loadRoots(cfg.TrustedRootsFile); err != nil {
			add("acme.trusted_roots_file", "%v", err)
		}
	default:
		add("mode", "%q is not off, files or acme", cfg.Mode)
	}
	return errors.Join(errs...)
}

func checkFiles(cfg Config, add func(field, format string, args ...any)) {
	if cfg.CertFile == "" {
		add("cert_file", "mode files needs the certificate chain's PEM file")
	}
	if cfg.KeyFile == "" {
		add("key_file", "mode files needs the private key's PEM file")
	}
	if cfg.CertFile == "" || cfg.KeyFile == "" {
		return
	}
	certPEM, err := os.ReadFile(cfg.CertFile)
	if err != nil {
		add("cert_file", "cannot read: %v", err)
	}
	if _, kerr := os.ReadFile(cfg.KeyFile); kerr != nil {
		add("key_file", "cannot read: %v", kerr)
		return
	}
	if err != nil {
		return
	}
	// The certificate alone first, so that a broken one is not blamed on the key.
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		add("cert_file", "%s holds no PEM CERTIFICATE block", cfg.CertFile)
		return
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		add("cert_file", "the first certificate does not parse: %v", err)
		return
	}
	if _, err := LoadPair(cfg.CertFile, cfg.KeyFile); err != nil {
		add("key_file", "is not the key of the certificate in tls.cert_file, or does not parse: %v", err)
	} else if cfg.Now().After(leaf.NotAfter) {
		add("cert_file", "the certificate expired at %s; renew it", leaf.NotAfter.Format(time.RFC3339))
	}
}

// loadRoots reads the PEM certificates of file; nil (the system roots) when file is empty.
func loadRoots(file string) (*x509.CertPool, error) {
	if file == "" {
		return nil, nil
	}
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("cannot read: %w", err)
	}
	if pool := x509.NewCertPool(); pool.AppendCertsFromPEM(raw) {
		return pool, nil
	}
	return nil, fmt.Errorf("%s holds no PEM certificates", file)
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
