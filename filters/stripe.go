package filters

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/hookrelay/hookrelay/relay"
)

// Stripe verifies Stripe's scheme: "Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]", each v1 a
// hex HMAC-SHA256 of "<t>.<body>" keyed with the endpoint secret's text. It is not changed after
// NewStripe, so one value serves concurrent requests.
type Stripe struct {
	keys [][]byte
	win  window
}

var _ relay.Verifier = (*Stripe)(nil)

// NewStripe returns a verifier that accepts a signature made with any of secrets (several during a
// rotation). A secret is used whole as the key, "whsec_" included and not base64-decoded, as
// Stripe does; surrounding white space is trimmed. A timestamp further than tolerance from now,
// either way, is refused; 0 means 5 minutes. now is the clock; nil means time.Now.
func NewStripe(secrets []string, tolerance time.Duration, now func() time.Time) (*Stripe, error) {
	keys, err := macRawSecrets(secrets)
	if err != nil {
		return nil, fmt.Errorf("stripe: %w", err)
	}
	win, err := newWindow(tolerance, now)
	if err != nil {
		return nil, fmt.Errorf("stripe: %w", err)
	}
	return &Stripe{keys: keys, win: win}, nil
}

// Verify parses Stripe-Signature, checks the timestamp, then every v1 signature against every
// secret. Other schemes (v0, test-mode extras) are ignored, as are v1 values that are not 64 hex
// digits: Stripe's own libraries skip them too.
func (s *Stripe) Verify(r *http.Request, body []byte) error {
	h := r.Header.Get("Stripe-Signature")
	if h == "" {
		return authFailf("missing Stripe-Signature header")
	}
	if len(h) > macMaxHeader {
		return authFailf("Stripe-Signature is %d bytes, over the %d-byte limit", len(h), macMaxHeader)
	}
	var t string
	var buf [4][sha256.Size]byte // on the stack for the usual one or two signatures
	sigs := buf[:0]
	bad := 0
	for item := range strings.SplitSeq(h, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(item), "=")
		if !ok {
			return authFailf("Stripe-Signature is malformed: an item has no '='")
		}
		switch k {
		case "t":
			if t != "" {
				// Which one was signed would be a guess.
				return authFailf("Stripe-Signature has more than one t=")
			}
			if v == "" {
				return authFailf("Stripe-Signature has an empty t=")
			}
			t = v
		case "v1":
			var sig [sha256.Size]byte
			if len(v) != hex.EncodedLen(sha256.Size) {
				bad++
				continue
			}
			if _, err := hex.Decode(sig[:], []byte(v)); err != nil {
				bad++
				continue
			}
			sigs = append(sigs, sig)
		}
	}
	if t == "" {
		return authFailf("Stripe-Signature has no t= timestamp")
	}
	if _, err := s.win.check("Stripe-Signature timestamp", t); err != nil {
		return relay.Unauthorized(err)
	}
	if len(sigs) == 0 {
		return authFailf("Stripe-Signature holds no well-formed v1 signature (%d malformed)", bad)
	}
	var sum [sha256.Size]byte
	for _, key := range s.keys {
		m := hmac.New(sha256.New, key)
		m.Write([]byte(t))
		m.Write([]byte{'.'})
		m.Write(body)
		want := m.Sum(sum[:0])
		for i := range sigs {
			if hmac.Equal(sigs[i][:], want) {
				return nil
			}
		}
	}
	return authFailf("none of %d v1 signatures matched any of %d secrets", len(sigs), len(s.keys))
}
