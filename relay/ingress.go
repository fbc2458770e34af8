package relay

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path"
	"strconv"
	"strings"
	"time"
)

// Route is one public webhook endpoint.
type Route struct {
	Name     string
	Path     string // exact match
	Provider string // preset name, reported to targets
	// Extractor reads the job ID and status; it is the provider preset.
	Extractor Extractor
	Targets   []string // target names; each gets its own delivery
	MaxBody   int64    // bytes; larger bodies are answered 413
	DedupeTTL time.Duration
	// RequireJobID answers 400 to a payload without a job ID instead of delivering it undeduped.
	RequireJobID bool
	AckStatus    int // 200 or 202 for a newly stored webhook

	// Guards run before the body is read, in order: source-IP allowlist, then per-address rate
	// limits (which protect the verifier's CPU).
	Guards []Guard
	// Verifier authenticates the webhook (signature or URL token); nil accepts any sender. A
	// HeadVerifier (URL token) runs before the body is read.
	Verifier Verifier
	// VerifiedGuards run once the webhook passed Verifier: a route-wide rate limit here is spent
	// only by authenticated senders, so nobody without the secret can use it up.
	VerifiedGuards []Guard
	// TokenInPath routes Path/<token> here too; the segment is secret, so it is never logged.
	TokenInPath bool
}

// ingress is the public handler: route match, body cap, extraction, then dedupe+enqueue as one
// store operation, and only then the 2xx.
type ingress struct {
	routes       map[string]*Route
	routePaths   []string // every route's Path, lower-cased: what an unmatched path may be logged up to
	clients      ClientResolver
	store        Enqueuer
	log          *slog.Logger
	now          func() time.Time
	storeTimeout time.Duration
	// enqueued is told which targets got new work, so their dispatchers wake at once.
	enqueued func(targets []string)
	metrics  *metrics
	breaker  *storeBreaker
}

// storeRetryAfter is what a sender is asked to wait when the store failed.
const storeRetryAfter = 5 * time.Second

func (h *ingress) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rt := h.match(r.URL.Path)
	client := h.clients.ClientAddr(r)
	msg, dup, err := h.accept(rt, client, w, r)
	log := h.log.With("path", h.logPath(r.URL.Path, rt), "peer", r.RemoteAddr, "client", client.String())
	route := unmatchedRoute
	if rt != nil {
		route = rt.Name
		log = log.With("route", rt.Name, "provider", rt.Provider)
	}
	if err != nil {
		if !bodyRead(r) {
			// Otherwise net/http reads up to 256 KiB of the unread body before it answers, so a
			// refused (or slow, or hostile) sender would hold the connection; drop it instead.
			w.Header().Set("Connection", "close")
		}
		status := writeError(w, err)
		h.metrics.received.WithLabelValues(route, outcomeOf(KindOf(err))).Inc()
		log.LogAttrs(r.Context(), levelFor(status), "webhook rejected",
			slog.Int("status", status), slog.String("error", err.Error()),
			slog.Duration("duration", time.Since(start)))
		return
	}
	log = log.With("job_id", msg.JobID, "job_status", msg.JobStatus)
	if dup {
		writeJSON(w, http.StatusOK, map[string]bool{"duplicate": true})
		h.acked(route, outcomeDuplicate, start)
		h.metrics.dedupeHits.WithLabelValues(route).Inc()
		log.LogAttrs(r.Context(), slog.LevelInfo, "webhook duplicate",
			slog.Int("status", http.StatusOK), slog.Duration("duration", time.Since(start)))
		return
	}
	h.enqueued(rt.Targets)
	writeJSON(w, rt.AckStatus, map[string]string{"id": msg.ID})
	h.acked(route, outcomeAccepted, start)
	log.LogAttrs(r.Context(), slog.LevelInfo, "webhook accepted",
		slog.String("message_id", msg.ID), slog.Int("status", rt.AckStatus),
		slog.Duration("duration", time.Since(start)))
}

// acked counts a 2xx answer and how long it took.
func (h *ingress) acked(route, outcome string, start time.Time) {
	h.metrics.received.WithLabelValues(route, outcome).Inc()
	h.metrics.ackSeconds.WithLabelValues(route).Observe(time.Since(start).Seconds())
}

func levelFor(status int) slog.Level {
	if status >= 500 {
		return slog.LevelError
	}
	return slog.LevelWarn
}

// logPath is what the log may show of the request path. A matched route shows its own path, a
// token in it replaced by <token>. Any other path may be a near miss that holds a token
// (//hooks/x/<token>, /hooks/X/<token>, /hooks/x<token>), so it is cleaned and case-folded, and
// only its leading segments that a route path shares are kept: the rest becomes "/...".
func (h *ingress) logPath(p string, rt *Route) string {
	if rt != nil {
		if p == rt.Path {
			return p
		}
		return rt.Path + "/<token>"
	}
	clean := strings.ToLower(path.Clean("/" + p))
	kept := ""
	for _, rp := range h.routePaths {
		if k := sharedSegments(clean, rp); len(k) > len(kept) {
			kept = k
		}
	}
	if kept == clean {
		return clean
	}
	return strings.TrimSuffix(kept, "/") + "/..."
}

// sharedSegments returns the leading whole path segments a and b have in common.
func sharedSegments(a, b string) string {
	n := 0
	for i := 0; i < len(a) && i < len(b) && a[i] == b[i]; i++ {
		if a[i] == '/' {
			n = i
		}
	}
	switch {
	case len(a) <= len(b) && b[:len(a)] == a && (len(b) == len(a) || b[len(a)] == '/'):
		return a
	case len(b) < len(a) && a[:len(b)] == b && a[len(b)] == '/':
		return b
	}
	return a[:n]
}

// match finds the route for path: an exact match, or Path/<token> for a route with TokenInPath.
func (h *ingress) match(path string) *Route {
	if rt := h.routes[path]; rt != nil {
		return rt
	}
	if i := strings.LastIndexByte(path, '/'); i > 0 && i < len(path)-1 {
		if rt := h.routes[path[:i]]; rt != nil && rt.TokenInPath {
			return rt
		}
	}
	return nil
}

// accept runs the checks in DESIGN.md order, cheapest first, and stores the webhook. Nothing
// touches the store before every check passed.
func (h *ingress) accept(rt *Route, client netip.Addr, w http.ResponseWriter, r *http.Request) (*Message, bool, error) {
	if rt == nil {
		return nil, false, &Error{Kind: KindNotFound, Msg: "no webhook route at this path"}
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return nil, false, &Error{Kind: KindMethod, Msg: "webhooks must be POSTed"}
	}
	if r.ContentLength > rt.MaxBody {
		return nil, false, tooLarge(rt.MaxBody)
	}
	if h.breaker.isOpen() {
		// Known down: no check could end in a 2xx, and a shared rate limit would wait on the
		// same Redis.
		return nil, false, &Error{Kind: KindUnavailable, Msg: "store unavailable, retry later", RetryAfter: storeRetryAfter}
	}
	if len(rt.Guards)+len(rt.VerifiedGuards) > 0 {
		// A guard that asks the store's Redis waits no longer than a store operation would.
		ctx, cancel := context.WithTimeout(r.Context(), h.storeTimeout)
		defer cancel()
		r = r.WithContext(ctx)
	}
	for _, g := range rt.Guards {
		if err := h.admit(g, r, client); err != nil {
			return nil, false, err
		}
	}
	_, headOnly := rt.Verifier.(HeadVerifier)
	if headOnly {
		// A wrong URL token costs no body read.
		if err := rt.Verifier.Verify(r, nil); err != nil {
			return nil, false, err
		}
	}
	body, err := readBody(w, r, rt.MaxBody)
	if err != nil {
		return nil, false, err
	}
	if rt.Verifier != nil && !headOnly {
		if err := rt.Verifier.Verify(r, body); err != nil {
			return nil, false, err
		}
	}
	for _, g := range rt.VerifiedGuards {
		if err := h.admit(g, r, client); err != nil {
			return nil, false, err
		}
	}
	var job Job
	if re, ok := rt.Extractor.(RequestExtractor); ok {
		job, err = re.ExtractRequest(r.Header, body)
	} else {
		job, err = rt.Extractor.Extract(body)
	}
	if err != nil {
		return nil, false, &Error{Kind: KindInvalid, Msg: err.Error(), Err: err}
	}
	key, ttl := "", rt.DedupeTTL
	switch {
	case job.ID != "":
		key = DedupeKey(rt.Name, job.ID, job.Status)
	case rt.RequireJobID:
		return nil, false, &Error{Kind: KindInvalid, Msg: "payload has no job ID, and this route requires one"}
	default:
		h.metrics.withoutJobID.WithLabelValues(rt.Name).Inc()
		// Without a job ID nothing dedupes it, so a captured webhook could be sent again: its own
		// identity stands in, remembered for as long as a replay would verify.
		if idf, ok := rt.Verifier.(Identifier); ok {
			if id, window := idf.Identity(r, body); id != "" {
				key = ReplayKey(rt.Name, id)
				if window > 0 {
					ttl = window
				}
			}
		}
	}
	now := h.now()
	msg := &Message{
		ID:          newID(now),
		Route:       rt.Name,
		Provider:    rt.Provider,
		JobID:       job.ID,
		JobStatus:   job.Status,
		ContentType: r.Header.Get("Content-Type"),
		SourceAddr:  sourceAddr(client, r),
		ReceivedAt:  now,
		Body:        body,
		Targets:     rt.Targets,
	}
	// The store operation must not be cut short by a sender that hangs up: it either commits or
	// fails as a whole, and the sender's retry is deduped either way.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), h.storeTimeout)
	defer cancel()
	dup, err := h.store.Enqueue(ctx, msg, key, ttl)
	if err != nil {
		h.breaker.failed(err)
		return msg, false, &Error{Kind: KindUnavailable, Msg: "store unavailable, retry later", Err: err, RetryAfter: storeRetryAfter}
	}
	return msg, dup, nil
}

// admit runs one guard, and opens the store breaker when the guard could not reach the store.
func (h *ingress) admit(g Guard, r *http.Request, client netip.Addr) error {
	err := g.Admit(r, client)
	if err != nil && errors.Is(err, ErrStoreDown) {
		h.breaker.failed(err)
	}
	return err
}

// bodyRead reports whether the request body was read to its end (or there was none).
func bodyRead(r *http.Request) bool {
	if r.ContentLength == 0 {
		return true
	}
	rb, ok := r.Body.(*readTracker)
	return ok && rb.done
}

// readTracker notes that the body was read to EOF.
type readTracker struct {
	io.ReadCloser
	done bool
}

func (t *readTracker) Read(p []byte) (int, error) {
	n, err := t.ReadCloser.Read(p)
	if err == io.EOF {
		t.done = true
	}
	return n, err
}

func tooLarge(limit int64) *Error {
	return &Error{Kind: KindTooLarge, Msg: "body exceeds the route's limit of " + strconv.FormatInt(limit, 10) + " bytes"}
}

// readBody reads the whole body, never more than limit bytes.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	tracker := &readTracker{ReadCloser: r.Body}
	r.Body = tracker
	body, err := io.ReadAll(http.MaxBytesReader(w, tracker, limit))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return nil, tooLarge(limit)
		}
		return nil, &Error{Kind: KindInvalid, Msg: "could not read body", Err: err}
	}
	return body, nil
}

// DedupeKey is the dedupe identity of DESIGN.md section 3: route, job ID and normalised status.
// The job ID is length-prefixed so that no choice of IDs and statuses can make two keys collide.
func DedupeKey(route, jobID, status string) string {
	return route + "|" + strconv.Itoa(len(jobID)) + ":" + jobID + "|" + status
}

// ReplayKey is the dedupe key of a webhook without a job ID: its route and its own identity (see
// Identifier). It cannot collide with a DedupeKey, whose part after the route starts with a digit.
func ReplayKey(route, identity string) string {
	return route + "|replay:" + identity
}

// sourceAddr is the sender's address as targets see it in X-Forwarded-For.
func sourceAddr(client netip.Addr, r *http.Request) string {
	if client.IsValid() {
		return client.String()
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// idEncoding keeps byte order, so IDs sort by creation time.
var idEncoding = base32.NewEncoding("0123456789abcdefghjkmnpqrstvwxyz").WithPadding(base32.NoPadding)

// newID returns a 26-character ID: 48 bits of milliseconds, then 80 random bits.
func newID(now time.Time) string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(now.UnixMilli())<<16)
	_, _ = rand.Read(b[6:])
	return idEncoding.EncodeToString(b[:])
}
