package tlsedge

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// filePair serves a certificate and key from two PEM files and reloads them when either file
// changes. A broken new pair is logged and the old one kept.
type filePair struct {
	certFile, keyFile string
	log               *slog.Logger

	cur atomic.Pointer[tls.Certificate] // Leaf always set

	mu     sync.Mutex   // serialises reloads
	seen   fileStamp    // the stamp of the files cur came from
	failed fileStamp    // the stamp of the last pair that failed to load, so it is logged once
	looks  atomic.Int64 // reloads done, for tests that need several looks to have happened
}

// fileStamp identifies a version of the pair cheaply, without reading it.
type fileStamp struct {
	certMod, keyMod   time.Time
	certSize, keySize int64
}

func stampOf(certFile, keyFile string) (fileStamp, error) {
	c, err := os.Stat(certFile)
	if err != nil {
		return fileStamp{}, err
	}
	k, err := os.Stat(keyFile)
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{certMod: c.ModTime(), keyMod: k.ModTime(), certSize: c.Size(), keySize: k.Size()}, nil
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
	if certFile == "" || keyFile == "" {
		return nil, errors.New("tlsedge: files mode needs a certificate file and a key file")
	}
	f := &filePair{certFile: certFile, keyFile: keyFile, log: log}
	st, err := stampOf(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("tlsedge: %w", err)
	}
	pair, err := LoadPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("tlsedge: %w", err)
	}
	f.cur.Store(pair)
	f.seen = st
	return f, nil
}

// reload loads the pair again when the files changed since the last look.
func (f *filePair) reload() {
	f.mu.Lock()
	defer f.mu.Unlock()
	defer f.looks.Add(1)
	st, err := stampOf(f.certFile, f.keyFile)
	if err != nil {
		if st != f.failed {
			f.log.Error("tls: cannot read the certificate files; keeping the current certificate", "error", err)
			f.failed = st
		}
		return
	}
	if st == f.seen || st == f.failed {
		return
	}
	pair, err := LoadPair(f.certFile, f.keyFile)
	if err != nil {
		// Often a pair caught between writing the certificate and the key: the next change
		// (the key written) is tried again.
		f.log.Error("tls: the changed certificate and key do not load; keeping the current certificate",
			"cert_file", f.certFile, "key_file", f.keyFile, "error", err)
		f.failed = st
		return
	}
	f.cur.Store(pair)
	f.seen, f.failed = st, fileStamp{}
	f.log.Info("tls: certificate reloaded", "names", pair.Leaf.DNSNames, "not_after", pair.Leaf.NotAfter)
}

func (f *filePair) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return f.cur.Load(), nil
}

// notAfter gives each name of the certificate its expiry.
func (f *filePair) notAfter() map[string]time.Time {
	leaf := f.cur.Load().Leaf
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
	if leaf := f.cur.Load().Leaf; now.After(leaf.NotAfter) {
		return fmt.Errorf("tls: the certificate from %s expired at %s", f.certFile, leaf.NotAfter.Format(time.RFC3339))
	}
	return nil
}
