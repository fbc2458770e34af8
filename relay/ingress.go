package relay

import (
	"bytes"
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
	"slices"
	"strconv"
	"strings"
	"sync"
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
	// ForwardHeaders names the sender's headers passed to targets unchanged (a signature the
	// service checks itself; WithDefaults adds the Verifier's, GitHub's event). Stored with the message.
	ForwardHeaders []string
	// When filters per target: a target named here gets only the webhooks its Matcher accepts;
	// the others get every webhook. A webhook no target wants is acknowledged but not stored.
	When map[string]Matcher
}

// Matcher decides whether a target wants a webhook, from what the preset read and the body.
type Matcher interface {
	Match(job Job, body []byte) bool
}

// wanted lists the route's targets that want the webhook; rt.Targets itself when all do.
func (rt *Route) wanted(job Job, body []byte) []string {
	if len(rt.When) == 0 {
		return rt.Targets
	}
	out := make([]string, 0, len(rt.Targets))
	for _, name := range rt.Targets {
		if m := rt.When[name]; m == nil || m.Match(job, body) {
			out = append(out, name)
		}
	}
	return out
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
	// dispatchers of this generation's targets, for hand-offs; lease is what the store records
	// for a delivery handed off.
	dispatchers map[string]*dispatcher
	lease       time.Duration
	metrics     *metrics
	breaker     *storeBreaker
	ids         *idSource
}

// storeRetryAfter is what a sender is asked to wait when the store failed.
const storeRetryAfter = 5 * time.Second

func (h *ingress) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rt := h.match(r.URL.Path)
	client := h.clients.ClientAddr(r)
	msg, outcome, err := h.accept(rt, client, w, r)
	// One access-log line per webhook, its attributes gathered here rather than with Logger.With,
	// which would build a logger per request before anything is written.
	attrs := make([]slog.Attr, 0, 12)
	attrs = append(attrs, slog.String("path", h.logPath(r.URL.Path, rt)), slog.String("peer", r.RemoteAddr),
		slog.String("client", client.String()))
	route := unmatchedRoute
	if rt != nil {
		route = rt.Name
		attrs = append(attrs, slog.String("route", rt.Name), slog.String("provider", rt.Provider))
	}
	if err != nil {
		if !bodyRead(r) {
			// Otherwise net/http reads up to 256 KiB of the unread body before it answers, so a
			// refused (or slow, or hostile) sender would hold the connection; drop it instead.
			w.Header().Set("Connection", "close")
		}
		status := writeError(w, err)
		h.metrics.received.WithLabelValues(route, outcomeOf(KindOf(err))).Inc()
		attrs = append(attrs, slog.Int("status", status), slog.String("error", err.Error()),
			slog.Duration("duration", time.Since(start)))
		h.log.LogAttrs(r.Context(), levelFor(status), "webhook rejected", attrs...)
		return
	}
	attrs = append(attrs, slog.String("job_id", msg.JobID), slog.String("job_status", msg.JobStatus))
	if outcome == outcomeFiltered {
		// Acknowledged, so the sender does not retry, but not stored: no target wants it. A store
		// that keeps history would record the message here as "filtered".
		writeBody(w, rt.AckStatus, filteredAnswer)
		h.acked(route, outcomeFiltered, start)
		h.metrics.filtered.WithLabelValues(route).Inc()
		attrs = append(attrs, slog.Int("status", rt.AckStatus), slog.Duration("duration", time.Since(start)))
		h.log.LogAttrs(r.Context(), slog.LevelInfo, "webhook filtered: no target of the route wants it", attrs...)
		return
	}
	if outcome == outcomeDuplicate {
		writeBody(w, http.StatusOK, duplicateAnswer)
		h.acked(route, outcomeDuplicate, start)
		h.metrics.dedupeHits.WithLabelValues(route).Inc()
		attrs = append(attrs, slog.Int("status", http.StatusOK), slog.Duration("duration", time.Since(start)))
		h.log.LogAttrs(r.Context(), slog.LevelInfo, "webhook duplicate", attrs...)
		return
	}
	// Message IDs are base32: nothing in them needs JSON escaping.
	writeBody(w, rt.AckStatus, []byte(`{"id":"`+msg.ID+`"}`+"\n"))
	h.acked(route, outcomeAccepted, start)
	attrs = append(attrs, slog.String("message_id", msg.ID), slog.Int("status", rt.AckStatus),
		slog.Duration("duration", time.Since(start)))
	h.log.LogAttrs(r.Context(), slog.LevelInfo, "webhook accepted", attrs...)
}

// The bodies of the answers to a duplicate and to a webhook no target wants.
var (
	duplicateAnswer = []byte(`{"duplicate":true}` + "\n")
	filteredAnswer  = []byte(`{"filtered":true}` + "\n")
)

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

// accept runs the checks in the order of docs/DESIGN.md section 1, cheapest first, and stores the
// webhook for the targets that want it. Nothing touches the store before every check passed. The
// outcome is outcomeAccepted, outcomeDuplicate, or outcomeFiltered (no target wants it: not stored).
func (h *ingress) accept(rt *Route, client netip.Addr, w http.ResponseWriter, r *http.Request) (*Message, string, error) {
	if rt == nil {
		return nil, "", &Error{Kind: KindNotFound, Msg: "no webhook route at this path"}
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return nil, "", &Error{Kind: KindMethod, Msg: "webhooks must be POSTed"}
	}
	if r.ContentLength > rt.MaxBody {
		return nil, "", tooLarge(rt.MaxBody)
	}
	if h.breaker.isOpen() {
		// Known down: no check could end in a 2xx, and a shared rate limit would wait on the
		// same Redis.
		return nil, "", &Error{Kind: KindUnavailable, Msg: "store unavailable, retry later", RetryAfter: storeRetryAfter}
	}
	for _, g := range rt.Guards {
		if err := h.admit(g, r, client); err != nil {
			return nil, "", err
		}
	}
	_, headOnly := rt.Verifier.(HeadVerifier)
	if headOnly {
		// A wrong URL token costs no body read.
		if err := rt.Verifier.Verify(r, nil); err != nil {
			return nil, "", err
		}
	}
	body, err := readBody(w, r, rt.MaxBody)
	if err != nil {
		return nil, "", err
	}
	if rt.Verifier != nil && !headOnly {
		if err := rt.Verifier.Verify(r, body); err != nil {
			return nil, "", err
		}
	}
	for _, g := range rt.VerifiedGuards {
		if err := h.admit(g, r, client); err != nil {
			return nil, "", err
		}
	}
	var job Job
	if re, ok := rt.Extractor.(RequestExtractor); ok {
		job, err = re.ExtractRequest(r.Header, body)
	} else {
		job, err = rt.Extractor.Extract(body)
	}
	if err != nil {
		return nil, "", &Error{Kind: KindInvalid, Msg: err.Error(), Err: err}
	}
	key, ttl := "", rt.DedupeTTL
	switch {
	case job.ID != "":
		key = DedupeKey(rt.Name, job.ID, job.Status)
	case rt.RequireJobID:
		return nil, "", &Error{Kind: KindInvalid, Msg: "payload has no job ID, and this route requires one"}
	default:
		h.metrics.withoutJobID.WithLabelValues(rt.Name).Inc()
		// Without a job ID nothing dedupes it, so a captured webhook could be sent again: its own
		// identity stands in, remembered for as long as a replay would verify.
		if idf, ok := rt.Verifier.(Identifier); ok {
			if id, window := idf.Identity(r, body); id != "" {
				key = replayKey(rt.Name, id)
				if window > 0 {
					ttl = window
				}
			}
		}
	}
	now := h.now()
	msg := &Message{
		ID:          h.ids.next(now),
		Route:       rt.Name,
		Provider:    rt.Provider,
		JobID:       job.ID,
		JobStatus:   job.Status,
		ContentType: r.Header.Get("Content-Type"),
		SourceAddr:  sourceAddr(client, r),
		ReceivedAt:  now,
		Body:        body,
		Targets:     rt.wanted(job, body),
		Headers:     forwarded(r.Header, rt.ForwardHeaders),
	}
	if len(msg.Targets) == 0 {
		// Nothing is stored, so nothing claims the dedupe key either: a repeat is filtered again,
		// the same way, as the filters read only the webhook itself.
		return msg, outcomeFiltered, nil
	}
	// The store operation must not be cut short by a sender that hangs up: it either commits or
	// fails as a whole, and the sender's retry is deduped either way.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), h.storeTimeout)
	defer cancel()
	// Targets whose dispatchers have room get the delivery in memory, leased to them in the store;
	// the others find it in the store.
	var leased []string
	for _, name := range msg.Targets {
		if h.dispatchers[name].reserve() {
			leased = append(leased, name)
		}
	}
	dup, claimed, err := h.store.EnqueueLeased(ctx, msg, key, ttl, h.lease, leased)
	for _, name := range leased {
		if i := slices.IndexFunc(claimed, func(d *Delivery) bool { return d.Target == name }); i >= 0 {
			h.dispatchers[name].handOff(claimed[i])
		} else {
			h.dispatchers[name].cancelReservation()
		}
	}
	if err != nil {
		h.breaker.failed(err)
		return msg, "", &Error{Kind: KindUnavailable, Msg: "store unavailable, retry later", Err: err, RetryAfter: storeRetryAfter}
	}
	if dup {
		return msg, outcomeDuplicate, nil
	}
	for _, name := range msg.Targets {
		if !slices.Contains(leased, name) {
			notify(h.dispatchers[name].wake)
		}
	}
	return msg, outcomeAccepted, nil
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

// DedupeKey is the dedupe identity of docs/DESIGN.md section 3: route, job ID and normalised status.
// The job ID is length-prefixed so that no choice of IDs and statuses can make two keys collide.
func DedupeKey(route, jobID, status string) string {
	return route + "|" + strconv.Itoa(len(jobID)) + ":" + jobID + "|" + status
}

// replayKey is the dedupe key of a webhook without a job ID: its route and its own identity (see
// Identifier). It cannot collide with a DedupeKey, whose part after the route starts with a digit.
func replayKey(route, identity string) string {
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

// idSource makes 26-character message IDs, 48 bits of milliseconds then 80 random bits, that
// sort by arrival within the process: in the same millisecond as the last one (or when the
// clock stepped back) an ID is the last one plus 1, as monotonic ULIDs are.
type idSource struct {
	mu   sync.Mutex
	last [16]byte
}

func (s *idSource) next(now time.Time) string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(now.UnixMilli())<<16)
	_, _ = rand.Read(b[6:])
	s.mu.Lock()
	if bytes.Compare(b[:6], s.last[:6]) <= 0 {
		b = s.last
		for i := len(b) - 1; i >= 0; i-- {
			if b[i]++; b[i] != 0 {
				break
			}
		}
	}
	s.last = b
	s.mu.Unlock()
	return idEncoding.EncodeToString(b[:])
}

// forwarded copies the named headers that the request has; nil when it has none of them.
func forwarded(h http.Header, names []string) http.Header {
	var out http.Header
	for _, name := range names {
		if v := h.Values(name); len(v) > 0 {
			if out == nil {
				out = make(http.Header, len(names))
			}
			out[http.CanonicalHeaderKey(name)] = slices.Clone(v)
		}
	}
	return out
}
