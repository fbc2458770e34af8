package tlsedge

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"github.com/hookrelay/hookrelay/relay/filewatch"
)

// filePair serves a certificate and key from two PEM files and reloads them when either file
// changes. A broken new pair is logged and the old one kept.
type filePair struct {
	certFile, keyFile string
	log               *slog.Logger
	pair              *filewatch.Value[*tls.Certificate] // Leaf always set
	looks             atomic.Int64                       // reloads done, for tests that need several looks to have happened
}

// LoadPair reads and checks a certificate and key: both parse, they belong together, and the
// certificate has a leaf. relay check uses it too.
func LoadPair(certFile, keyFile string) (*tls.Certificate, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	if pair.Leaf == nil {
		if pair.Leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
	}
	return &pair, nil
}

func newFilePair(certFile, keyFile string, log *slog.Logger) (*filePair, error) {
	pair, err := filewatch.New(func() (*tls.Certificate, error) { return LoadPair(certFile, keyFile) }, certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("tlsedge: %w", err)
	}
	return &filePair{certFile: certFile, keyFile: keyFile, log: log, pair: pair}, nil
}

// reload loads the pair again when the files changed since the last look.
func (f *filePair) reload() {
	defer f.looks.Add(1)
	reloaded, err := f.pair.Reload()
	switch {
	case err != nil:
		// Often a pair caught between writing the certificate and the key: the next change
		// (the key written) is tried again.
		f.log.Error("tls: the changed certificate and key do not load; keeping the current certificate",
			"cert_file", f.certFile, "key_file", f.keyFile, "error", err)
	case reloaded:
		leaf := f.pair.Get().Leaf
		f.log.Info("tls: certificate reloaded", "names", leaf.DNSNames, "not_after", leaf.NotAfter)
	}
}

func (f *filePair) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return f.pair.Get(), nil
}

// notAfter gives each name of the certificate its expiry.
func (f *filePair) notAfter() map[string]time.Time {
	leaf := f.pair.Get().Leaf
	names := slices.Clone(leaf.DNSNames)
	for _, ip := range leaf.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 {
		names = []string{leaf.Subject.CommonName}
	}
	out := make(map[string]time.Time, len(names))
	for _, n := range names {
		out[n] = leaf.NotAfter
	}
	return out
}

func (f *filePair) ready(now time.Time) error {
	if leaf := f.pair.Get().Leaf; now.After(leaf.NotAfter) {
		return fmt.Errorf("tls: the certificate from %s expired at %s", f.certFile, leaf.NotAfter.Format(time.RFC3339))
	}
	return nil
}
