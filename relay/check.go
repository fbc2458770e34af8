package relay

import (
	"errors"
	"net/http"
	"net/netip"
	"time"
)

// The checks a webhook passes before it is stored, in this order (docs/DESIGN.md section 1):
// body cap, Guards (source IP, per-address rate: before the body is read), a HeadVerifier (URL
// token, also before the body), the Verifier (signature: on the body), VerifiedGuards (the
// route-wide rate, spent only by authenticated webhooks), then the provider preset and the store.
// Nothing touches the store before they pass.

// ClientResolver says who sent a request: the TCP peer, unless a trusted proxy says otherwise.
type ClientResolver interface {
	ClientAddr(r *http.Request) netip.Addr
}

// Guard admits or refuses a sender before its body is read. It returns nil, or an error from
// Forbidden or RateLimited.
type Guard interface {
	Admit(r *http.Request, client netip.Addr) error
}

// Verifier authenticates a webhook: a signature over its body, or a secret token in its URL. It
// returns nil or an error from Unauthorized.
type Verifier interface {
	Verify(r *http.Request, body []byte) error
}

// HeadVerifier is a Verifier that needs only the request line and headers (a URL token); ingress
// runs it before reading the body, and passes it a nil body.
type HeadVerifier interface {
	Verifier
	HeadOnly()
}

// Identifier is a Verifier that names the webhook it verified, so that a replay of a webhook
// without a job ID is answered as a duplicate. Identity runs only after Verify passed. id is
// what a replay repeats and the signature covers (Standard Webhooks' webhook-id, a hash of the
// signed body and timestamp); window is how long a replay could verify (twice the timestamp
// tolerance), 0 when forever (no signed timestamp): then the route's dedupe TTL bounds it. id ""
// names nothing.
type Identifier interface {
	Identity(r *http.Request, body []byte) (id string, window time.Duration)
}

// RequestExtractor is an Extractor that also reads the request's headers (a job ID sent in a
// header); ingress prefers it to Extract.
type RequestExtractor interface {
	ExtractRequest(h http.Header, body []byte) (Job, error)
}

// ErrStoreDown marks a check's failure to reach the store it keeps its state in (a rate limit
// shared through the store's Redis): ingress then knows the store is down, and answers 503 at
// once until it answers again. Wrap it with %w in the error's cause.
var ErrStoreDown = errors.New("store unreachable")

// Forbidden refuses a source address (403). cause is logged, never sent.
func Forbidden(cause error) *Error {
	return &Error{Kind: KindForbidden, Msg: "source address not allowed", Err: cause}
}

// RateLimited refuses a request over a rate (429); the sender may retry after retryAfter.
func RateLimited(retryAfter time.Duration, cause error) *Error {
	return &Error{Kind: KindRateLimited, Msg: "rate limit exceeded, retry later", Err: cause, RetryAfter: max(retryAfter, time.Second)}
}

// Unauthorized refuses a webhook whose signature or token does not verify (401). The sender is
// told nothing that helps an attacker (which part failed, which key was tried); cause says exactly
// why, for the log.
func Unauthorized(cause error) *Error {
	return &Error{Kind: KindUnauthorized, Msg: "webhook authentication failed", Err: cause}
}

// peerResolver is the default ClientResolver: the TCP peer, believing no header.
type peerResolver struct{}

func (peerResolver) ClientAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}
