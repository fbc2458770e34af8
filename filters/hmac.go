package filters

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/hookrelay/hookrelay/relay"
)

// HMACConfig configures the generic HMAC verifier.
type HMACConfig struct {
	Header    string // header holding the signature; required
	Algorithm string // sha256 (default) or sha512
	Encoding  string // hex (default) or base64 (standard alphabet, padded)
	Prefix    string // stripped before decoding, e.g. "sha256="; the header must start with it
	// TimestampHeader names a header holding the send time in unix seconds. Optional; when set the
	// timestamp must be signed (Template holds {timestamp}) and within Tolerance of the clock.
	TimestampHeader string
	// Template is the signed string: {body} (exactly once) and {timestamp} (at most once) are
	// replaced, the rest is literal. Default "{body}", or "{timestamp}.{body}" with a
	// TimestampHeader.
	Template string
	// Tolerance is how far the timestamp may be from the clock, either way; default 5 minutes.
	// Only with a TimestampHeader.
	Tolerance time.Duration
}

// HMAC verifies a single HMAC signature in one header, as many providers without a named scheme
// send. It is not changed after NewHMAC, so one value serves concurrent requests.
type HMAC struct {
	header   string // canonical
	prefix   string
	newHash  func() hash.Hash
	size     int // MAC size in bytes
	encoding string
	tsHeader string // canonical; "" when none
	parts    []macPart
	win      window // with a timestamp header
	keys     [][]byte
}

var _ relay.Verifier = (*HMAC)(nil)

// macPart is one piece of a compiled template: a literal, the body, or the timestamp.
type macPart struct {
	lit  string
	kind byte // 0 literal, 'b' body, 't' timestamp
}

// NewHMAC returns a verifier for c that accepts a signature made with any of secrets (several
// during a rotation). Secrets are used as raw bytes, trimmed of surrounding white space. now is
// the clock; nil means time.Now.
func NewHMAC(c HMACConfig, secrets []string, now func() time.Time) (*HMAC, error) {
	h, err := newHMAC(c, secrets, now)
	if err != nil {
		return nil, fmt.Errorf("hmac: %w", err)
	}
	return h, nil
}

// newHMAC is NewHMAC with errors unprefixed, for the schemes built on it.
func newHMAC(c HMACConfig, secrets []string, now func() time.Time) (*HMAC, error) {
	h := &HMAC{prefix: c.Prefix}
	var err error
	if h.header, err = macHeaderName("header", c.Header); err != nil {
		return nil, err
	}
	switch strings.ToLower(c.Algorithm) {
	case "", "sha256":
		h.newHash, h.size = sha256.New, sha256.Size
	case "sha512":
		h.newHash, h.size = sha512.New, sha512.Size
	default:
		return nil, fmt.Errorf("unknown algorithm %q: want sha256 or sha512", c.Algorithm)
	}
	switch h.encoding = strings.ToLower(c.Encoding); h.encoding {
	case "":
		h.encoding = "hex"
	case "hex", "base64":
	default:
		return nil, fmt.Errorf("unknown encoding %q: want hex or base64", c.Encoding)
	}
	if len(c.Prefix) > 64 || hasControl([]byte(c.Prefix)) {
		return nil, errors.New("prefix is longer than 64 bytes or holds a control character")
	}
	if c.TimestampHeader != "" {
		if h.tsHeader, err = macHeaderName("timestamp header", c.TimestampHeader); err != nil {
			return nil, err
		}
		if h.tsHeader == h.header {
			return nil, fmt.Errorf("timestamp header and signature header are both %s", h.header)
		}
		if h.win, err = newWindow(c.Tolerance, now); err != nil {
			return nil, err
		}
	} else if c.Tolerance != 0 {
		return nil, errors.New("tolerance is set but there is no timestamp header to apply it to")
	}
	tmpl := c.Template
	if tmpl == "" {
		tmpl = "{body}"
		if h.tsHeader != "" {
			tmpl = "{timestamp}.{body}"
		}
	}
	if h.parts, err = macCompileTemplate(tmpl, h.tsHeader != ""); err != nil {
		return nil, err
	}
	if h.keys, err = macRawSecrets(secrets); err != nil {
		return nil, err
	}
	return h, nil
}

func macCompileTemplate(tmpl string, haveTS bool) ([]macPart, error) {
	var parts []macPart
	nBody, nTS := 0, 0
	for s := tmpl; s != ""; {
		i := strings.IndexAny(s, "{}")
		if i < 0 {
			parts = append(parts, macPart{lit: s})
			break
		}
		if i > 0 {
			parts = append(parts, macPart{lit: s[:i]})
			s = s[i:]
		}
		switch {
		case strings.HasPrefix(s, "{body}"):
			parts = append(parts, macPart{kind: 'b'})
			nBody++
			s = s[len("{body}"):]
		case strings.HasPrefix(s, "{timestamp}"):
			parts = append(parts, macPart{kind: 't'})
			nTS++
			s = s[len("{timestamp}"):]
		default:
			// A typo such as {Body} would otherwise be signed literally and never match.
			return nil, fmt.Errorf("template %q: unknown placeholder or stray brace at byte %d: want {body} and {timestamp}", tmpl, len(tmpl)-len(s))
		}
	}
	switch {
	case nBody != 1:
		return nil, fmt.Errorf("template %q must hold {body} exactly once", tmpl)
	case nTS > 1:
		return nil, fmt.Errorf("template %q holds {timestamp} more than once", tmpl)
	case nTS == 1 && !haveTS:
		return nil, fmt.Errorf("template %q holds {timestamp} but no timestamp header is set", tmpl)
	case nTS == 0 && haveTS:
		// An unsigned timestamp can be rewritten by whoever replays the request: no protection.
		return nil, fmt.Errorf("template %q does not hold {timestamp}, so the timestamp header would not be signed", tmpl)
	}
	return parts, nil
}

// Verify checks the signature header against every secret.
func (h *HMAC) Verify(r *http.Request, body []byte) error {
	v := r.Header.Get(h.header)
	if v == "" {
		return authFailf("missing %s header", h.header)
	}
	if len(v) > macMaxHeader {
		return authFailf("%s header is %d bytes, over the %d-byte limit", h.header, len(v), macMaxHeader)
	}
	enc, ok := strings.CutPrefix(v, h.prefix)
	if !ok {
		return authFailf("%s header does not start with %q", h.header, h.prefix)
	}
	var buf [sha512.Size]byte
	got := buf[:h.size]
	if err := h.decode(got, enc); err != nil {
		return authFailf("%s header: %w", h.header, err)
	}
	var ts string
	if h.tsHeader != "" {
		ts = r.Header.Get(h.tsHeader)
		if ts == "" {
			return authFailf("missing %s header", h.tsHeader)
		}
		if _, err := h.win.check(h.tsHeader, ts); err != nil {
			return relay.Unauthorized(err)
		}
	}
	var sum [sha512.Size]byte
	for _, key := range h.keys {
		m := hmac.New(h.newHash, key)
		for _, p := range h.parts {
			switch p.kind {
			case 'b':
				m.Write(body)
			case 't':
				m.Write([]byte(ts))
			default:
				m.Write([]byte(p.lit))
			}
		}
		if hmac.Equal(m.Sum(sum[:0]), got) {
			return nil
		}
	}
	return authFailf("%s signature matched none of %d secrets", h.header, len(h.keys))
}

// decode decodes enc into dst, which it must fill exactly. The length is checked before decoding,
// so a forged header costs no more than a real one.
func (h *HMAC) decode(dst []byte, enc string) error {
	var want int
	if h.encoding == "hex" {
		want = hex.EncodedLen(len(dst))
	} else {
		want = base64.StdEncoding.EncodedLen(len(dst))
	}
	if len(enc) != want {
		return fmt.Errorf("signature is %d characters, want %d (%s)", len(enc), want, h.encoding)
	}
	var n int
	var err error
	if h.encoding == "hex" {
		n, err = hex.Decode(dst, []byte(enc))
	} else {
		// Strict refuses stray padding bits, so a MAC has one spelling. It still skips line
		// breaks, which leave n short.
		n, err = base64.StdEncoding.Strict().Decode(dst, []byte(enc))
	}
	if err != nil || n != len(dst) {
		return fmt.Errorf("signature is not valid %s", h.encoding)
	}
	return nil
}

// Helpers shared by the signature verifiers (HMAC, GitHub, Stripe, Standard Webhooks).

// MinSecretLen is the fewest bytes a signing secret or URL token may have: 16 random bytes
// are 128 bits, and even 16 hex digits are 64.
const MinSecretLen = 16

const (
	// macDefaultTolerance is the timestamp tolerance when none is configured: five minutes, as
	// Standard Webhooks and Stripe recommend.
	macDefaultTolerance = 5 * time.Minute
	// macMaxHeader caps a signature header, in bytes. Real ones are under 300 bytes; the cap bounds
	// the work a forged one costs (a decode and a comparison per entry, per secret).
	macMaxHeader = 4096
	// macMaxTimestampDigits caps a timestamp: 18 digits always fit an int64.
	macMaxTimestampDigits = 18
)

// authFailf returns a relay.Unauthorized error with a cause for the log. A cause never holds a
// secret, an expected signature or a received token.
func authFailf(format string, args ...any) error {
	return relay.Unauthorized(fmt.Errorf(format, args...))
}

// window is the replay window of the schemes that sign a timestamp (HMAC with a timestamp header,
// Stripe, Standard Webhooks, fal): how far the timestamp may be from the clock, either way.
type window struct {
	tol time.Duration
	now func() time.Time
}

// newWindow applies the defaults (macDefaultTolerance, time.Now) and refuses tolerances that can
// only be mistakes.
func newWindow(tol time.Duration, now func() time.Time) (window, error) {
	switch {
	case tol == 0:
		tol = macDefaultTolerance
	case tol < 0:
		return window{}, fmt.Errorf("tolerance %v is negative", tol)
	case tol < time.Second:
		// Timestamps are whole seconds; this is most likely a bare number read as nanoseconds.
		return window{}, fmt.Errorf("tolerance %v is under a second (a number without a unit?)", tol)
	}
	if now == nil {
		now = time.Now
	}
	return window{tol: tol, now: now}, nil
}

// macRawSecrets checks secrets used as raw bytes. Surrounding white space is trimmed: it is
// almost always a file's trailing newline, which would make every signature fail.
func macRawSecrets(secrets []string) ([][]byte, error) {
	if len(secrets) == 0 {
		return nil, errors.New("no secrets")
	}
	keys := make([][]byte, len(secrets))
	for i, s := range secrets {
		s = strings.TrimSpace(s)
		switch {
		case s == "":
			return nil, fmt.Errorf("secret %d is empty", i+1)
		case len(s) < MinSecretLen:
			return nil, fmt.Errorf("secret %d is %d bytes, want at least %d: a short secret can be guessed", i+1, len(s), MinSecretLen)
		}
		keys[i] = []byte(s)
	}
	return keys, nil
}

// macHeaderName checks a configured header name and returns its canonical form.
func macHeaderName(what, name string) (string, error) {
	if name == "" {
		return "", fmt.Errorf("%s is empty", what)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0 {
			continue
		}
		return "", fmt.Errorf("%s %q is not a valid header name", what, name)
	}
	return http.CanonicalHeaderKey(name), nil
}

// check parses header's value v as unix seconds and refuses it outside the window. Only canonical
// decimal is taken (digits, no sign, no leading zero): signers render the number so, and any other
// spelling is not what they signed. A refusal says by how much, and hints at milliseconds, the
// usual mistake.
func (w window) check(header, v string) (int64, error) {
	ok := v != "" && len(v) <= macMaxTimestampDigits && (v[0] != '0' || len(v) == 1)
	var ts int64
	for i := 0; ok && i < len(v); i++ {
		c := v[i]
		ok = c >= '0' && c <= '9'
		ts = ts*10 + int64(c-'0')
	}
	if !ok {
		return 0, fmt.Errorf("%s %s is not unix seconds", header, macQuote(v))
	}
	d := w.now().Unix() - ts // no overflow: 0 <= ts < 1e18
	ad := d
	if ad < 0 {
		ad = -ad
	}
	if ad <= int64(w.tol/time.Second) { // exact: d is whole seconds
		return ts, nil
	}
	// Seconds, not a Duration, when one would overflow.
	by := fmt.Sprintf("%ds", ad)
	if ad <= math.MaxInt64/int64(time.Second) {
		by = (time.Duration(ad) * time.Second).String()
	}
	if d > 0 {
		return 0, fmt.Errorf("%s %d is %s old, over the %v tolerance", header, ts, by, w.tol)
	}
	hint := ""
	if ts >= 1e12 && ts < 1e14 { // 13 or 14 digits: now, or soon, in milliseconds
		hint = " (milliseconds instead of seconds?)"
	}
	return 0, fmt.Errorf("%s %d is %s in the future, over the %v tolerance%s", header, ts, by, w.tol, hint)
}

// macQuote quotes an untrusted value for a log message, shortened so a sender cannot flood the
// log.
func macQuote(v string) string {
	const limit = 40
	if len(v) > limit {
		return fmt.Sprintf("%q... (%d bytes)", v[:limit], len(v))
	}
	return fmt.Sprintf("%q", v)
}
