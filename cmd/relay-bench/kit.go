package main

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hookrelay/hookrelay/relay"
)

// kit is what the senders need to pass each route's verification. It lives as files in one
// directory, which is also where the relay reads its secrets from.
type kit struct {
	dir    string
	token  string             // URL token: fashn's path segment, abstrakt's ?token=
	whKey  []byte             // Standard Webhooks key of the "replicate" route
	falKey ed25519.PrivateKey // signs fal webhooks; its public half is in jwks.json
	tls    bool               // cert.pem and key.pem exist
}

// File names inside a kit directory.
const (
	fileToken  = "token"
	fileWhsec  = "whsec"
	fileFalKey = "fal_ed25519_seed"
	fileJWKS   = "jwks.json"
	fileCert   = "cert.pem"
	fileKey    = "key.pem"
	fileConfig = "config.yaml"
)

// newKit generates fresh secrets (and a TLS certificate for 127.0.0.1 when withTLS) into dir.
func newKit(dir string, withTLS bool) (*kit, error) {
	k := &kit{dir: dir, whKey: make([]byte, 32), tls: withTLS}
	tok := make([]byte, 16)
	if _, err := rand.Read(tok); err != nil {
		return nil, err
	}
	k.token = hex.EncodeToString(tok)
	if _, err := rand.Read(k.whKey); err != nil {
		return nil, err
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	k.falKey = priv
	pub := priv.Public().(ed25519.PublicKey)
	jwks, _ := json.Marshal(map[string]any{"keys": []map[string]string{
		{"kty": "OKP", "crv": "Ed25519", "use": "sig", "x": base64.RawURLEncoding.EncodeToString(pub)},
	}})
	files := map[string][]byte{
		fileToken:  []byte(k.token + "\n"),
		fileWhsec:  []byte("whsec_" + base64.StdEncoding.EncodeToString(k.whKey) + "\n"),
		fileFalKey: []byte(hex.EncodeToString(priv.Seed()) + "\n"),
		fileJWKS:   jwks,
	}
	if withTLS {
		cert, key, err := selfSigned()
		if err != nil {
			return nil, err
		}
		files[fileCert], files[fileKey] = cert, key
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return nil, err
		}
	}
	return k, nil
}

// loadKit reads a kit that newKit wrote, for a relay started by someone else.
func loadKit(dir string) (*kit, error) {
	read := func(name string) (string, error) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return "", fmt.Errorf("%w (write the directory with -write-config)", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	k := &kit{dir: dir}
	var err error
	if k.token, err = read(fileToken); err != nil {
		return nil, err
	}
	wh, err := read(fileWhsec)
	if err != nil {
		return nil, err
	}
	if k.whKey, err = relay.ParseSigningSecret(wh); err != nil {
		return nil, err
	}
	seedHex, err := read(fileFalKey)
	if err != nil {
		return nil, err
	}
	seed, err := hex.DecodeString(seedHex)
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, errors.New(fileFalKey + ": not a hex Ed25519 seed")
	}
	k.falKey = ed25519.NewKeyFromSeed(seed)
	_, err = os.Stat(filepath.Join(dir, fileCert))
	k.tls = err == nil
	return k, nil
}

func (k *kit) path(name string) string { return filepath.Join(k.dir, name) }

// rootCAs returns a pool holding the kit's self-signed certificate.
func (k *kit) rootCAs() (*x509.CertPool, error) {
	pemData, err := os.ReadFile(k.path(fileCert))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemData) {
		return nil, errors.New(fileCert + ": no certificate")
	}
	return pool, nil
}

// selfSigned makes an ECDSA P-256 certificate for 127.0.0.1 and localhost, valid for a day.
func selfSigned() (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "relay-bench"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:    []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

// relayConfig is the configuration of a relay under test: one route per provider shape, each with
// the verification it has in production, all delivering to the bench's target.
func relayConfig(k *kit, o *options, listen, admin, sinkURL, dataDir, redisPrefix string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "listen: %s\nadmin: {listen: %s}\ndata_dir: %s\n", listen, admin, dataDir)
	fmt.Fprintf(&b, "log: {level: %s, format: json}\n", o.logLevel)
	if k.tls {
		fmt.Fprintf(&b, "tls: {mode: files, cert_file: %s, key_file: %s}\n", k.path(fileCert), k.path(fileKey))
	}
	if o.store == "redis" {
		addr := o.redisAddr
		if addr == "" {
			addr = "127.0.0.1:6379"
		}
		fmt.Fprintf(&b, "store:\n  type: redis\n  redis: {url: \"redis://%s/0\", prefix: %s}\n", addr, redisPrefix)
	} else {
		b.WriteString("store: {type: embedded}\n")
	}
	// A paused target holds requests until sending ends: neither the attempt's timeout nor the
	// lease may run out meanwhile, or held deliveries would be retried.
	lease, timeout := "2m", "30s"
	if o.pause {
		lease, timeout = "3h", "2h"
	}
	fmt.Fprintf(&b, "delivery: {lease: %s, poll_interval: 1s}\n", lease)
	fmt.Fprintf(&b, "targets:\n  - name: sink\n    url: %s/deliver\n    timeout: %s\n    concurrency: %d\n", sinkURL, timeout, o.concurrency)
	fmt.Fprintf(&b, `routes:
  - name: fashn
    path: /hooks/fashn
    provider: fashn
    targets: [sink]
    verify: {type: url_token, secrets_files: [%[1]s]}
  - name: fal
    path: /hooks/fal
    provider: fal
    targets: [sink]
    verify: {type: fal, jwks_file: %[2]s}
  - name: fotor
    path: /hooks/fotor
    provider: fotor
    targets: [sink]
    allowlist: [127.0.0.1/32]
  - name: abstrakt
    path: /hooks/abstrakt
    provider: abstrakt
    targets: [sink]
    verify: {type: url_token, secrets_files: [%[1]s], query: token}
  - name: replicate
    path: /hooks/replicate
    provider: generic
    generic: {job_id: id, status: status}
    targets: [sink]
    verify: {type: standard_webhooks, secrets_files: [%[3]s]}
`, k.path(fileToken), k.path(fileJWKS), k.path(fileWhsec))
	return b.String()
}

// writeConfigDir is -write-config: a kit and a config for a relay that someone else starts.
func writeConfigDir(o *options) error {
	if strings.HasSuffix(o.sinkListen, ":0") {
		return errors.New("-write-config: give -sink-listen a fixed address (the config names it), e.g. 127.0.0.1:9100")
	}
	if err := os.MkdirAll(o.writeDir, 0o700); err != nil {
		return err
	}
	dir, err := filepath.Abs(o.writeDir)
	if err != nil {
		return err
	}
	k, err := newKit(dir, o.tls)
	if err != nil {
		return err
	}
	cfg := relayConfig(k, o, o.listen, o.admin, "http://"+o.sinkListen, filepath.Join(dir, "data"), "relaybench")
	return os.WriteFile(k.path(fileConfig), []byte(cfg), 0o600)
}
