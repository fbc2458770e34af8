package relay

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// Kind classifies an error by what the sender should be told. Kinds map to HTTP statuses in one
// place, statusOf.
type Kind uint8

const (
	KindInternal     Kind = iota // a bug or an unexpected failure: 500
	KindNotFound                 // no route: 404
	KindMethod                   // wrong method: 405
	KindTooLarge                 // body over the route's limit: 413
	KindForbidden                // source not allowed: 403
	KindRateLimited              // over the route's rate: 429
	KindUnauthorized             // bad or missing signature or token: 401
	KindInvalid                  // malformed payload: 400
	KindUnavailable              // store unavailable: 503
)

func statusOf(k Kind) int {
	switch k {
	case KindNotFound:
		return http.StatusNotFound
	case KindMethod:
		return http.StatusMethodNotAllowed
	case KindTooLarge:
		return http.StatusRequestEntityTooLarge
	case KindForbidden:
		return http.StatusForbidden
	case KindRateLimited:
		return http.StatusTooManyRequests
	case KindUnauthorized:
		return http.StatusUnauthorized
	case KindInvalid:
		return http.StatusBadRequest
	case KindUnavailable:
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
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

// Errorf builds an *Error whose logged cause is fmt.Errorf(format, args...).
func Errorf(k Kind, msg string, format string, args ...any) *Error {
	return &Error{Kind: k, Msg: msg, Err: fmt.Errorf(format, args...)}
}

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
