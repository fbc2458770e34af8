package filters

import (
	"fmt"
	"net/http"

	"github.com/hookrelay/hookrelay/relay"
)

// GitHub verifies GitHub's scheme: "X-Hub-Signature-256: sha256=<hex HMAC-SHA256(body)>". It is
// the generic HMAC with GitHub's settings; the SHA-1 X-Hub-Signature is not accepted. It is not
// changed after NewGitHub, so one value serves concurrent requests.
type GitHub struct {
	h *HMAC
}

var _ relay.Verifier = (*GitHub)(nil)

// NewGitHub returns a verifier that accepts a signature made with any of secrets (several during a
// rotation), used as raw bytes and trimmed of surrounding white space. GitHub signs no timestamp,
// so a captured delivery can be replayed; deduplication by job ID is what limits that.
func NewGitHub(secrets []string) (*GitHub, error) {
	h, err := newHMAC(HMACConfig{Header: "X-Hub-Signature-256", Prefix: "sha256="}, secrets, nil)
	if err != nil {
		return nil, fmt.Errorf("github: %w", err)
	}
	return &GitHub{h: h}, nil
}

// ForwardHeaders are the headers a GitHub route passes to its targets beside its own
// (relay.Route.WithDefaults): the event type, which the body does not carry, and the delivery ID.
func (g *GitHub) ForwardHeaders() []string { return []string{"X-GitHub-Event", "X-GitHub-Delivery"} }

// Verify checks X-Hub-Signature-256 against every secret.
func (g *GitHub) Verify(r *http.Request, body []byte) error { return g.h.Verify(r, body) }
