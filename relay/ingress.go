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
	"slices"
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

	// Guards run before the body is read, in order: source-IP allowlist, then rate limits.
	Guards []Guard
	// Verifier authenticates the webhook (signature or URL token); nil accepts any sender.
	Verifier Verifier
	// TokenInPath routes Path/<token> here too; the segment is secret, so it is never logged.
	TokenInPath bool
}

// ingress is the public handler: route match, body cap, extraction, then dedupe+enqueue as one
// store operation, and only then the 2xx.
type ingress struct {
	routes        map[string]*Route
	tokenPrefixes []string // Path+"/" of each route with TokenInPath
	clients       ClientResolver
	store         Enqueuer
	log           *slog.Logger
	now           func() time.Time
	storeTimeout  time.Duration
	// dispatchers of this generation's targets, for hand-offs; lease is what the store records
	// for a delivery handed off.
	dispatchers map[string]*dispatcher
	lease       time.Duration
	metrics     *metrics
}

// storeRetryAfter is what a sender is asked to wait when the store failed.
const storeRetryAfter = 5 * time.Second

func (h *ingress) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rt := h.match(r.URL.Path)
	client := h.clients.ClientAddr(r)
	msg, dup, err := h.accept(rt, client, w, r)
	// One access-log line per webhook, its attributes gathered here rather than with Logger.With,
	// which would build a logger per request before anything is written.
	attrs := make([]slog.Attr, 0, 12)
	attrs = append(attrs, slog.String("path", h.logPath(r.URL.Path)), slog.String("peer", r.RemoteAddr),
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
	if dup {
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

// duplicateAnswer is the body of the answer to a duplicate.
var duplicateAnswer = []byte(`{"duplicate":true}` + "\n")

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

// logPath is path with any secret token cut out: whatever follows the path of a route that takes
// a token in its path, whether or not the request matched the route.
func (h *ingress) logPath(path string) string {
	for _, prefix := range h.tokenPrefixes {
		if strings.HasPrefix(path, prefix) {
			return prefix + "<token>"
		}
	}
	return path
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
	for _, g := range rt.Guards {
		if err := g.Admit(r, client); err != nil {
			return nil, false, err
		}
	}
	body, err := readBody(w, r, rt.MaxBody)
	if err != nil {
		return nil, false, err
	}
	if rt.Verifier != nil {
		if err := rt.Verifier.Verify(r, body); err != nil {
			return nil, false, err
		}
	}
	job, err := rt.Extractor.Extract(body)
	if err != nil {
		return nil, false, &Error{Kind: KindInvalid, Msg: err.Error(), Err: err}
	}
	if job.ID == "" {
		if rt.RequireJobID {
			return nil, false, &Error{Kind: KindInvalid, Msg: "payload has no job ID, and this route requires one"}
		}
		h.metrics.withoutJobID.WithLabelValues(rt.Name).Inc()
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
	key := ""
	if job.ID != "" {
		key = DedupeKey(rt.Name, job.ID, job.Status)
	}
	// The store operation must not be cut short by a sender that hangs up: it either commits or
	// fails as a whole, and the sender's retry is deduped either way.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), h.storeTimeout)
	defer cancel()
	// Targets whose dispatchers have room get the delivery in memory, leased to them in the store;
	// the others find it in the store.
	var leased []string
	for _, name := range rt.Targets {
		if h.dispatchers[name].reserve() {
			leased = append(leased, name)
		}
	}
	dup, claimed, err := h.store.EnqueueLeased(ctx, msg, key, rt.DedupeTTL, h.lease, leased)
	for _, name := range leased {
		if i := slices.IndexFunc(claimed, func(d *Delivery) bool { return d.Target == name }); i >= 0 {
			h.dispatchers[name].handOff(claimed[i])
		} else {
			h.dispatchers[name].cancelReservation()
		}
	}
	if err != nil {
		return msg, false, &Error{Kind: KindUnavailable, Msg: "store unavailable, retry later", Err: err, RetryAfter: storeRetryAfter}
	}
	if !dup {
		for _, name := range rt.Targets {
			if !slices.Contains(leased, name) {
				notify(h.dispatchers[name].wake)
			}
		}
	}
	return msg, dup, nil
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
