package filters

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"filippo.io/edwards25519"
	jose "github.com/go-jose/go-jose/v4"
	josejson "github.com/go-jose/go-jose/v4/json"

	"github.com/hookrelay/hookrelay/relay"
)

// fal's webhook signature (docs/DESIGN.md section 5): an Ed25519 signature over
// request_id "\n" user_id "\n" timestamp "\n" hex(sha256(body)), by any key of fal's JWKS.

// The headers fal signs a webhook with.
const (
	FalHeaderRequestID = "X-Fal-Webhook-Request-Id"
	FalHeaderUserID    = "X-Fal-Webhook-User-Id"
	FalHeaderTimestamp = "X-Fal-Webhook-Timestamp"
	FalHeaderSignature = "X-Fal-Webhook-Signature"
)

// FalJWKSURL is where fal publishes its webhook signing keys.
const FalJWKSURL = "https://rest.fal.ai/.well-known/jwks.json"

const (
	falDefaultMaxAge     = 24 * time.Hour
	falDefaultMinRefresh = time.Minute
	// falFetchTimeout bounds one JWKS fetch even when the caller's Client has no timeout: a
	// webhook waits for it.
	falFetchTimeout = 10 * time.Second
	// falRetryAfter is what fal is told when no key is available yet: long enough for MinRefresh
	// (default 1m) to pass after one or two retries, short next to fal's retry window.
	falRetryAfter = 30 * time.Second

	// maxJWKSSize and maxJWKSKeys bound what a JWKS can make the relay parse and store. A bad
	// signature is tried against every key, so maxJWKSEd25519 also bounds the CPU a forged webhook
	// costs.
	maxJWKSSize    = 64 << 10
	maxJWKSKeys    = 64
	maxJWKSEd25519 = 16
)

// FalConfig configures NewFal. Exactly one key source is used: JWKSFile if set, otherwise
// JWKSURL (FalJWKSURL when empty).
type FalConfig struct {
	// JWKSURL is fetched lazily, on the first webhook, so the relay starts without network. It must
	// be https; plain http is allowed only for 127.0.0.1, ::1 and localhost (tests).
	JWKSURL string
	// JWKSFile is read once, by NewFal, and never re-read: rotating its keys needs a restart.
	JWKSFile string
	// Client fetches JWKSURL. nil: a client with a 10s timeout that refuses redirects to URLs
	// JWKSURL could not be (plain http). A given client's redirect policy is used as is.
	Client *http.Client
	// Tolerance is how far X-Fal-Webhook-Timestamp may be from now, either way. 0: 5 minutes.
	Tolerance time.Duration
	// MaxAge is how long fetched keys are used before they are fetched again. 0: 24h, the maximum.
	// If that fetch fails the old keys stay in use, with a warning, until one succeeds.
	MaxAge time.Duration
	// MinRefresh is the least time between two fetches, whatever triggers them (first use, MaxAge,
	// a signature no cached key verifies). 0: 1m.
	MinRefresh time.Duration
	// Now is the clock. nil: time.Now.
	Now func() time.Time
	// Logger receives fetch results and refresh failures. nil: discard.
	Logger *slog.Logger
}

// WithDefaults returns c with the defaults named on its fields set (JWKSURL only without a
// JWKSFile): NewFal applies it, and the configuration layer shows it.
func (c FalConfig) WithDefaults() FalConfig {
	if c.JWKSURL == "" && c.JWKSFile == "" {
		c.JWKSURL = FalJWKSURL
	}
	c.MaxAge, c.MinRefresh = cmp.Or(c.MaxAge, falDefaultMaxAge), cmp.Or(c.MinRefresh, falDefaultMinRefresh)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Fal verifies fal's webhook signatures. It is safe for concurrent use.
type Fal struct {
	url        string // "" when the keys came from a file
	client     *http.Client
	win        window
	maxAge     time.Duration
	minRefresh time.Duration
	now        func() time.Time
	log        *slog.Logger

	mu       sync.Mutex
	keys     *falKeys      // nil until the first successful fetch; replaced, never modified
	lastTry  time.Time     // start of the last fetch, successful or not
	lastErr  error         // why the last fetch failed; nil after a success
	inflight chan struct{} // closed when the running fetch ends; nil when none runs
	waiting  atomic.Int64  // callers waiting for the running fetch (tests look at it)
}

// falKeys is one fetched key set. Its address identifies the fetch, so a caller can tell whether
// the keys changed since it looked.
type falKeys struct {
	keys    []ed25519.PublicKey
	fetched time.Time
}

var _ relay.Verifier = (*Fal)(nil)

// NewFal returns a verifier of fal's webhook signatures. With JWKSFile it reads and parses the
// file now; with a URL it only checks the URL.
func NewFal(c FalConfig) (*Fal, error) {
	win, err := newWindow(c.Tolerance, c.Now)
	if err != nil {
		return nil, fmt.Errorf("fal: %w", err)
	}
	c = c.WithDefaults()
	f := &Fal{client: c.Client, win: win, maxAge: c.MaxAge, minRefresh: c.MinRefresh, now: win.now, log: c.Logger}
	switch {
	case c.MaxAge < 0 || c.MaxAge > falDefaultMaxAge:
		return nil, fmt.Errorf("fal: JWKS max age %v is outside 0..%v", c.MaxAge, falDefaultMaxAge)
	case c.MinRefresh < 0:
		return nil, fmt.Errorf("fal: JWKS min refresh %v is negative", c.MinRefresh)
	case c.MinRefresh > c.MaxAge:
		return nil, fmt.Errorf("fal: JWKS min refresh %v exceeds max age %v", c.MinRefresh, c.MaxAge)
	}
	if c.JWKSFile != "" {
		if c.JWKSURL != "" {
			return nil, errors.New("fal: set JWKS URL or JWKS file, not both")
		}
		keys, err := readJWKSFile(c.JWKSFile)
		if err != nil {
			return nil, fmt.Errorf("fal: %w", err)
		}
		f.keys = &falKeys{keys: keys, fetched: f.now()}
		return f, nil
	}

	f.url = c.JWKSURL
	if err := checkJWKSURL(f.url); err != nil {
		return nil, fmt.Errorf("fal: JWKS URL: %w", err)
	}
	if f.client == nil {
		f.client = &http.Client{
			Timeout: falFetchTimeout,
			// The default policy would follow an https URL to plain http.
			CheckRedirect: func(req *http.Request, via []*http.Request) error {
				if len(via) >= 5 {
					return errors.New("more than 5 redirects")
				}
				return checkJWKSURL(req.URL.String())
			},
		}
	}
	return f, nil
}

func readJWKSFile(name string) ([]ed25519.PublicKey, error) {
	fh, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("JWKS file: %w", err)
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, maxJWKSSize+1))
	if err != nil {
		return nil, fmt.Errorf("JWKS file: %w", err)
	}
	keys, err := parseJWKS(data)
	if err != nil {
		return nil, fmt.Errorf("JWKS file %s: %w", name, err)
	}
	return keys, nil
}

// checkJWKSURL requires https, except plain http to the local machine (tests). The URL may not
// carry credentials: it is logged.
func checkJWKSURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return err
	}
	if u.User != nil {
		return errors.New("must not hold credentials")
	}
	if u.Host == "" {
		return fmt.Errorf("%q has no host", s)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		switch u.Hostname() {
		case "127.0.0.1", "::1", "localhost":
			return nil
		}
	}
	return fmt.Errorf("%q: want https (plain http only to 127.0.0.1, ::1 or localhost)", s)
}

// Verify checks r's fal signature headers against body. A failed check is a relay.Unauthorized
// error; no keys at all (the first fetch failed) is a KindUnavailable error, so fal retries.
func (f *Fal) Verify(r *http.Request, body []byte) error {
	msg, sig, err := f.signedMessage(r.Header, body)
	if err != nil {
		return relay.Unauthorized(err)
	}
	ctx := r.Context()
	ks, err := f.current(ctx)
	if err != nil {
		err = fmt.Errorf("fal: no signature keys: %w", err)
		return &relay.Error{Kind: relay.KindUnavailable, Msg: "signature keys unavailable, retry later", Err: err, RetryAfter: falRetryAfter}
	}
	if ks.verify(msg, sig) {
		return nil
	}
	if f.url == "" {
		return relay.Unauthorized(fmt.Errorf("fal: no key of %d verified the signature", len(ks.keys)))
	}
	// The signature is well formed and fresh, so fal may have rotated to a key not yet fetched.
	// refresh is rate limited: a flood of forgeries costs fal's endpoint one fetch per MinRefresh.
	nks, err := f.refresh(ctx, ks)
	if err != nil {
		return relay.Unauthorized(fmt.Errorf("fal: no key of %d verified the signature; no new keys: %w", len(ks.keys), err))
	}
	if nks.verify(msg, sig) {
		return nil
	}
	return relay.Unauthorized(fmt.Errorf("fal: no key of %d verified the signature, after fetching the JWKS again", len(nks.keys)))
}

// signedMessage checks the four headers and builds the message fal signed.
func (f *Fal) signedMessage(h http.Header, body []byte) (msg []byte, sig []byte, err error) {
	var vals [4]string
	for i, name := range [...]string{FalHeaderRequestID, FalHeaderUserID, FalHeaderTimestamp, FalHeaderSignature} {
		v := h.Values(name)
		switch {
		case len(v) == 0 || v[0] == "":
			return nil, nil, fmt.Errorf("fal: missing header %s", name)
		case len(v) > 1:
			// Which one would be signed is ambiguous; fal sends each once.
			return nil, nil, fmt.Errorf("fal: header %s given %d times", name, len(v))
		}
		vals[i] = v[0]
	}
	reqID, userID, ts, sigHex := vals[0], vals[1], vals[2], vals[3]

	if _, err := f.win.check(FalHeaderTimestamp, ts); err != nil {
		return nil, nil, fmt.Errorf("fal: %w", err)
	}

	if len(sigHex) != 2*ed25519.SignatureSize {
		return nil, nil, fmt.Errorf("fal: signature is %d characters, want %d hex digits", len(sigHex), 2*ed25519.SignatureSize)
	}
	sig = make([]byte, ed25519.SignatureSize)
	if _, err := hex.Decode(sig, []byte(sigHex)); err != nil {
		return nil, nil, errors.New("fal: signature is not hex")
	}

	sum := sha256.Sum256(body)
	msg = make([]byte, 0, len(reqID)+len(userID)+len(ts)+3+2*sha256.Size)
	msg = append(msg, reqID...)
	msg = append(msg, '\n')
	msg = append(msg, userID...)
	msg = append(msg, '\n')
	msg = append(msg, ts...)
	msg = append(msg, '\n')
	msg = hex.AppendEncode(msg, sum[:])
	return msg, sig, nil
}

func (ks *falKeys) verify(msg, sig []byte) bool {
	for _, k := range ks.keys {
		if ed25519.Verify(k, msg, sig) {
			return true
		}
	}
	return false
}

// current returns the keys to verify with, fetching them when there are none or they are older
// than MaxAge. When that fetch fails or may not run yet, expired keys are still used: fal's
// endpoint being down must not stop webhooks fal itself signed.
func (f *Fal) current(ctx context.Context) (*falKeys, error) {
	f.mu.Lock()
	ks := f.keys
	fresh := ks != nil && (f.url == "" || f.now().Sub(ks.fetched) < f.maxAge)
	f.mu.Unlock()
	if fresh {
		return ks, nil
	}
	nks, err := f.refresh(ctx, ks)
	if err == nil {
		return nks, nil
	}
	if ks != nil {
		return ks, nil
	}
	return nil, err
}

// errThrottled reports a fetch refused because the last one was less than MinRefresh ago.
var errThrottled = errors.New("JWKS fetched too recently")

// refresh returns keys newer than seen (nil: none seen). It fetches them unless another caller
// already did, waits for a fetch in progress rather than start a second one, and starts at most
// one fetch per MinRefresh.
func (f *Fal) refresh(ctx context.Context, seen *falKeys) (*falKeys, error) {
	f.mu.Lock()
	for f.inflight != nil {
		ch := f.inflight
		f.waiting.Add(1)
		f.mu.Unlock()
		select {
		case <-ch:
			f.waiting.Add(-1)
		case <-ctx.Done():
			f.waiting.Add(-1)
			return nil, fmt.Errorf("waiting for the JWKS: %w", context.Cause(ctx))
		}
		f.mu.Lock()
	}
	if f.keys != nil && f.keys != seen {
		ks := f.keys
		f.mu.Unlock()
		return ks, nil
	}
	now := f.now()
	if !f.lastTry.IsZero() && now.Sub(f.lastTry) < f.minRefresh {
		err := fmt.Errorf("%w (%v ago, minimum %v)", errThrottled, now.Sub(f.lastTry), f.minRefresh)
		if f.lastErr != nil {
			err = fmt.Errorf("%w; it failed: %w", err, f.lastErr)
		}
		f.mu.Unlock()
		return nil, err
	}
	f.lastTry = now
	done := make(chan struct{})
	f.inflight = done
	f.mu.Unlock()

	// Waiters share this fetch, so one caller going away must not cancel it.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), falFetchTimeout)
	keys, err := f.fetch(fctx)
	cancel()

	f.mu.Lock()
	f.inflight = nil
	close(done)
	if err != nil {
		f.lastErr = err
		cached := 0
		if f.keys != nil {
			cached = len(f.keys.keys)
		}
		f.mu.Unlock()
		f.log.Warn("fal JWKS fetch failed; keeping cached keys", "url", f.url, "cached_keys", cached, "err", err)
		return nil, err
	}
	f.lastErr = nil
	ks := &falKeys{keys: keys, fetched: f.now()}
	f.keys = ks
	f.mu.Unlock()
	f.log.Info("fal JWKS fetched", "url", f.url, "keys", len(keys))
	return ks, nil
}

func (f *Fal) fetch(ctx context.Context) ([]ed25519.PublicKey, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := f.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("JWKS: HTTP status %d", resp.StatusCode)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSSize+1))
	if err != nil {
		return nil, fmt.Errorf("JWKS: %w", err)
	}
	keys, err := parseJWKS(data)
	if err != nil {
		return nil, fmt.Errorf("JWKS: %w", err)
	}
	return keys, nil
}

// parseJWKS returns the Ed25519 verification keys of a JSON Web Key Set (RFC 7517, RFC 8037),
// skipping keys of other types, which a set may also hold, unparsed. go-jose parses each Ed25519
// key (member names matched exactly, duplicates refused).
//
// A key marked for another use or algorithm is skipped; one holding a private part or a point of
// small order is an error: the first means the set leaks a signing key, the second would verify a
// forged signature, and both are a broken set rather than one to use partly.
func parseJWKS(data []byte) ([]ed25519.PublicKey, error) {
	if len(data) > maxJWKSSize {
		return nil, fmt.Errorf("larger than %d bytes", maxJWKSSize)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, fmt.Errorf("not a JSON object: %w", err)
	}
	raw, ok := top["keys"]
	if !ok {
		return nil, errors.New(`no "keys" member`)
	}
	var entries []json.RawMessage
	if err := json.Unmarshal(raw, &entries); err != nil {
		return nil, fmt.Errorf(`"keys" is not an array: %w`, err)
	}
	if len(entries) > maxJWKSKeys {
		return nil, fmt.Errorf("%d keys, at most %d supported", len(entries), maxJWKSKeys)
	}
	var keys []ed25519.PublicKey
	for i, e := range entries {
		var head struct {
			Kty string `json:"kty"`
			Crv string `json:"crv"`
			X   string `json:"x"`
		}
		if err := josejson.Unmarshal(e, &head); err != nil {
			return nil, fmt.Errorf("key %d is not a JWK: %w", i, err)
		}
		if head.Kty != "OKP" || head.Crv != "Ed25519" {
			continue
		}
		// go-jose would pad or cut x to 32 bytes and take stray bits: x must be exactly a key.
		switch x, err := base64.RawURLEncoding.Strict().DecodeString(head.X); {
		case err != nil:
			return nil, fmt.Errorf("key %d: x is not unpadded base64url", i)
		case len(x) != ed25519.PublicKeySize:
			return nil, fmt.Errorf("key %d: x is %d bytes, want %d", i, len(x), ed25519.PublicKeySize)
		}
		var k jose.JSONWebKey
		if err := k.UnmarshalJSON(e); err != nil {
			return nil, fmt.Errorf("key %d: %w", i, err)
		}
		pub, ok := k.Key.(ed25519.PublicKey)
		switch {
		case !ok:
			return nil, fmt.Errorf("key %d holds a private key", i)
		case (k.Use != "" && k.Use != "sig") || (k.Algorithm != "" && k.Algorithm != "EdDSA" && k.Algorithm != "Ed25519"):
			continue
		case !validEd25519Key(pub):
			return nil, fmt.Errorf("key %d: x is not a usable Ed25519 public key", i)
		}
		if !slices.ContainsFunc(keys, func(k ed25519.PublicKey) bool { return k.Equal(pub) }) {
			keys = append(keys, pub)
		}
	}
	switch {
	case len(keys) == 0:
		return nil, fmt.Errorf("no Ed25519 signing key among %d keys", len(entries))
	case len(keys) > maxJWKSEd25519:
		return nil, fmt.Errorf("%d Ed25519 keys, at most %d supported", len(keys), maxJWKSEd25519)
	}
	return keys, nil
}

// validEd25519Key reports whether pub is the canonical encoding of a curve point whose order is not
// small. crypto/ed25519 checks neither, and a small-order key verifies forged signatures: with the
// identity point as key, one fixed signature verifies every message.
func validEd25519Key(pub []byte) bool {
	p, err := new(edwards25519.Point).SetBytes(pub)
	if err != nil || !bytes.Equal(p.Bytes(), pub) { // off the curve, or not canonical
		return false
	}
	return new(edwards25519.Point).MultByCofactor(p).Equal(edwards25519.NewIdentityPoint()) == 0
}
