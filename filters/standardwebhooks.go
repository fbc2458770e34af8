package filters

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/hookrelay/hookrelay/relay"
)

// swMaxID caps webhook-id, in bytes. Real IDs are about 30; it ends up in log lines.
const swMaxID = 256

// StandardWebhooks verifies the Standard Webhooks scheme (https://www.standardwebhooks.com), used
// by Replicate, Svix and others: headers webhook-id, webhook-timestamp and webhook-signature, a
// space-separated list of "v1,<base64 HMAC-SHA256(id.timestamp.body)>". It is not changed after
// NewStandardWebhooks, so one value serves concurrent requests.
type StandardWebhooks struct {
	keys [][]byte
	win  window
}

var _ relay.Verifier = (*StandardWebhooks)(nil)

// NewStandardWebhooks returns a verifier that accepts a signature made with any of secrets (several
// during a rotation), each "whsec_" and base64 as relay.ParseSigningSecret reads it. A timestamp
// further than tolerance from now, either way, is refused; 0 means 5 minutes. now is the clock;
// nil means time.Now.
func NewStandardWebhooks(secrets []string, tolerance time.Duration, now func() time.Time) (*StandardWebhooks, error) {
	if len(secrets) == 0 {
		return nil, fmt.Errorf("standard webhooks: no secrets")
	}
	v := &StandardWebhooks{keys: make([][]byte, len(secrets))}
	for i, s := range secrets {
		key, err := relay.ParseSigningSecret(s)
		if err != nil {
			return nil, fmt.Errorf("standard webhooks: secret %d: %w", i+1, err)
		}
		if len(key) < MinSecretLen {
			return nil, fmt.Errorf("standard webhooks: secret %d is %d bytes (after base64 decoding), want at least %d: a short secret can be guessed", i+1, len(key), MinSecretLen)
		}
		v.keys[i] = key
	}
	var err error
	if v.win, err = newWindow(tolerance, now); err != nil {
		return nil, fmt.Errorf("standard webhooks: %w", err)
	}
	return v, nil
}

// Verify checks the headers, then the signatures against every secret. Signatures of versions
// other than v1 are ignored, as the specification asks.
func (v *StandardWebhooks) Verify(r *http.Request, body []byte) error {
	id := r.Header.Get("Webhook-Id")
	if id == "" {
		return authFailf("missing webhook-id header")
	}
	if len(id) > swMaxID {
		return authFailf("webhook-id is %d bytes, over the %d-byte limit", len(id), swMaxID)
	}
	tsv := r.Header.Get("Webhook-Timestamp")
	if tsv == "" {
		return authFailf("missing webhook-timestamp header")
	}
	ts, err := v.win.check("webhook-timestamp", tsv)
	if err != nil {
		return relay.Unauthorized(err)
	}
	sig := r.Header.Get("Webhook-Signature")
	if sig == "" {
		return authFailf("missing webhook-signature header")
	}
	if len(sig) > macMaxHeader {
		return authFailf("webhook-signature is %d bytes, over the %d-byte limit", len(sig), macMaxHeader)
	}
	// Counted only for the log: VerifyStandardWebhook skips other versions itself.
	n := 0
	for f := range strings.FieldsSeq(sig) {
		if strings.HasPrefix(f, "v1,") {
			n++
		}
	}
	if n == 0 {
		return authFailf("webhook-signature holds no v1 signature")
	}
	for _, key := range v.keys {
		if relay.VerifyStandardWebhook(key, id, ts, body, sig) {
			return nil
		}
	}
	return authFailf("none of %d v1 signatures matched any of %d secrets", n, len(v.keys))
}
