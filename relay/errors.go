package relay

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"
)

// Kind classifies an error by what the sender should be told. Each kind has one HTTP status and
// one outcome label of hookrelay_webhooks_received_total, in kinds.
type Kind uint8

const (
	KindInternal     Kind = iota // a bug or an unexpected failure
	KindNotFound                 // no route
	KindMethod                   // wrong method
	KindTooLarge                 // body over the route's limit
	KindForbidden                // source not allowed
	KindRateLimited              // over the route's rate
	KindUnauthorized             // bad or missing signature or token
	KindInvalid                  // malformed payload
	KindUnavailable              // store unavailable
)

// kinds maps each Kind to its status and metric outcome: the one place either is decided.
var kinds = [...]struct {
	status  int
	outcome string
}{
	KindInternal:     {http.StatusInternalServerError, outcomeError},
	KindNotFound:     {http.StatusNotFound, outcomeNoRoute},
	KindMethod:       {http.StatusMethodNotAllowed, outcomeInvalid},
	KindTooLarge:     {http.StatusRequestEntityTooLarge, outcomeTooLarge},
	KindForbidden:    {http.StatusForbidden, outcomeDeniedIP},
	KindRateLimited:  {http.StatusTooManyRequests, outcomeRateLimited},
	KindUnauthorized: {http.StatusUnauthorized, outcomeBadSig},
	KindInvalid:      {http.StatusBadRequest, outcomeInvalid},
	KindUnavailable:  {http.StatusServiceUnavailable, outcomeStoreError},
}

func statusOf(k Kind) int {
	if int(k) < len(kinds) {
		return kinds[k].status
	}
	return http.StatusInternalServerError
}

// outcomeOf names what a refused webhook came to, by its error kind.
func outcomeOf(k Kind) string {
	if int(k) < len(kinds) {
		return kinds[k].outcome
	}
	return outcomeError
}

// Error is an error with a kind and a message safe to show the sender. The wrapped Err is for logs
// only: it may say exactly why a signature failed, which the sender must not learn.
type Error struct {
	Kind       Kind
	Msg        string        // shown to the sender
	Err        error         // logged, never shown
	RetryAfter time.Duration // sent as Retry-After with 429 and 503
}

func (e *Error) Error() string {
	if e.Err != nil && e.Err.Error() != e.Msg {
		return e.Msg + ": " + e.Err.Error()
	}
	return e.Msg
}

func (e *Error) Unwrap() error { return e.Err }

// KindOf reports the kind of err, KindInternal when it carries none.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return KindInternal
}

// writeError answers the sender with err's status and a JSON body holding only the public message.
func writeError(w http.ResponseWriter, err error) int {
	var e *Error
	if !errors.As(err, &e) {
		e = &Error{Kind: KindInternal, Msg: "internal error", Err: err}
	}
	status := statusOf(e.Kind)
	if e.RetryAfter > 0 {
		secs := int((e.RetryAfter + time.Second - 1) / time.Second)
		w.Header().Set("Retry-After", strconv.Itoa(secs))
	}
	writeJSON(w, status, map[string]string{"error": e.Msg})
	return status
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, _ := json.Marshal(v)
	writeBody(w, status, append(b, '\n'))
}

// writeBody answers with a JSON body already encoded.
func writeBody(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h["Content-Type"] = []string{"application/json"}
	h["Content-Length"] = []string{strconv.Itoa(len(body))}
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
