package filters

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/hookrelay/hookrelay/relay"
)

// The identities verifiers give the relay for webhooks without a job ID (relay.Identifier). An
// identity must come from what the signature covers: a replayer can change anything else.

var (
	_ relay.Identifier = (*StandardWebhooks)(nil)
	_ relay.Identifier = (*Stripe)(nil)
	_ relay.Identifier = (*GitHub)(nil)
	_ relay.Identifier = (*HMAC)(nil)
	_ relay.Identifier = (*Fal)(nil)
)

// digest is a hex SHA-256 over parts, each length-prefixed so that no two lists of parts collide.
func digest(parts ...[]byte) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write(strconv.AppendInt(nil, int64(len(p)), 10))
		h.Write([]byte{':'})
		h.Write(p)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Identity is the signed webhook-id, which the sender keeps across its retries; a replay verifies
// for twice the tolerance (a timestamp up to tolerance old, received up to tolerance early).
func (v *StandardWebhooks) Identity(r *http.Request, _ []byte) (string, time.Duration) {
	return "sw:" + r.Header.Get("Webhook-Id"), 2 * v.win.tol
}

// Identity is the event's id from the signed body, which Stripe keeps across its retries, so it is
// remembered for the route's dedupe TTL; a body without one is named by its timestamp and hash,
// for twice the tolerance.
func (s *Stripe) Identity(r *http.Request, body []byte) (string, time.Duration) {
	var ev struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(body, &ev) == nil && ev.ID != "" && len(ev.ID) <= MaxValueLen {
		return "stripe:" + ev.ID, 0
	}
	var t string
	for item := range strings.SplitSeq(r.Header.Get("Stripe-Signature"), ",") {
		if k, v, _ := strings.Cut(strings.TrimSpace(item), "="); k == "t" {
			t = v
		}
	}
	return "stripe:" + digest([]byte(t), body), 2 * s.win.tol
}

// Identity is the hash of the signed body. GitHub signs nothing else: X-GitHub-Delivery is not
// signed, so a replay could carry a new one. With no signed timestamp a replay verifies forever;
// the route's dedupe TTL bounds how long it is refused.
func (g *GitHub) Identity(r *http.Request, body []byte) (string, time.Duration) {
	id, _ := g.h.Identity(r, body)
	return id, 0
}

// Identity is the hash of what is signed: the timestamp (for twice the tolerance) and the body,
// or the body alone (for the route's dedupe TTL: it verifies forever).
func (h *HMAC) Identity(r *http.Request, body []byte) (string, time.Duration) {
	if h.tsHeader == "" {
		return "body:" + digest(body), 0
	}
	return "ts-body:" + digest([]byte(r.Header.Get(h.tsHeader)), body), 2 * h.win.tol
}

// Identity is fal's request ID and timestamp, both signed, for twice the tolerance.
func (f *Fal) Identity(r *http.Request, _ []byte) (string, time.Duration) {
	return "fal:" + digest([]byte(r.Header.Get(FalHeaderRequestID)), []byte(r.Header.Get(FalHeaderTimestamp))), 2 * f.win.tol
}
