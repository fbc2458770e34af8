package relay

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// The message history API (docs/DESIGN.md section 2.5): GET /v1/messages, GET /v1/messages/{id},
// POST /v1/messages/{id}/redeliver. Same token rules as the rest of the admin API.

// MessageJSON is a message as the history API shows it (and relay messages reads it); the body
// only in the detail, on request.
type MessageJSON struct {
	ID              string         `json:"id"`
	Route           string         `json:"route"`
	Provider        string         `json:"provider"`
	JobID           string         `json:"job_id"`
	JobStatus       string         `json:"job_status"`
	ContentType     string         `json:"content_type"`
	SourceAddr      string         `json:"source_addr"`
	ReceivedAt      time.Time      `json:"received_at"`
	Size            int            `json:"size"`
	Duplicates      int            `json:"duplicates"`
	LastDuplicateAt *time.Time     `json:"last_duplicate_at"`
	Headers         http.Header    `json:"headers,omitempty"`
	Targets         []string       `json:"targets"`
	Deliveries      []DeliveryJSON `json:"deliveries"`
	Body            *string        `json:"body,omitempty"`
	BodyBase64      *string        `json:"body_base64,omitempty"`
}

// DeliveryJSON is one target's delivery of a message in the history API.
type DeliveryJSON struct {
	ID          string        `json:"id"`
	Target      string        `json:"target"`
	State       string        `json:"state"`
	Attempt     int           `json:"attempt"`
	NextDue     *time.Time    `json:"next_due"` // live deliveries: when it is (or was) due next
	LastStatus  int           `json:"last_status"`
	LastError   string        `json:"last_error"`
	DeliveredAt *time.Time    `json:"delivered_at"`
	DeadAt      *time.Time    `json:"dead_at"`
	Attempts    []AttemptJSON `json:"attempts,omitempty"`
}

// AttemptJSON is one attempt of a delivery in the history API.
type AttemptJSON struct {
	Number     int       `json:"number"`
	Start      time.Time `json:"start"`
	DurationMS float64   `json:"duration_ms"`
	Status     int       `json:"status"`
	Error      string    `json:"error"`
	// Response is the start of the target's answer (at most 1 KiB): text when valid UTF-8.
	Response       *string `json:"response,omitempty"`
	ResponseBase64 *string `json:"response_base64,omitempty"`
}

// textOrBase64 returns b as text when it is valid UTF-8, else as base64 (the other nil).
func textOrBase64(b []byte) (text, b64 *string) {
	if utf8.Valid(b) {
		s := string(b)
		return &s, nil
	}
	s := base64.StdEncoding.EncodeToString(b)
	return nil, &s
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func messageOf(rec *MessageRecord, detail bool) MessageJSON {
	m := &rec.Message
	out := MessageJSON{ID: m.ID, Route: m.Route, Provider: m.Provider, JobID: m.JobID, JobStatus: m.JobStatus,
		ContentType: m.ContentType, SourceAddr: m.SourceAddr, ReceivedAt: m.ReceivedAt, Size: rec.Size,
		Duplicates: rec.Duplicates, LastDuplicateAt: timePtr(rec.LastDuplicateAt), Targets: nonNil(m.Targets),
		Deliveries: make([]DeliveryJSON, 0, len(rec.Deliveries))}
	if detail {
		out.Headers = m.Headers
	}
	for _, d := range rec.Deliveries {
		dj := DeliveryJSON{ID: d.ID, Target: d.Target, State: d.State, Attempt: d.Attempt, NextDue: timePtr(d.DueAt),
			LastStatus: d.LastStatus, LastError: d.LastError, DeliveredAt: timePtr(d.DeliveredAt), DeadAt: timePtr(d.DeadAt)}
		if detail {
			dj.Attempts = make([]AttemptJSON, 0, len(d.Attempts))
			for _, a := range d.Attempts {
				aj := AttemptJSON{Number: a.Number, Start: a.Start, DurationMS: float64(a.Duration.Microseconds()) / 1000,
					Status: a.Status, Error: a.Error}
				if len(a.Response) > 0 {
					aj.Response, aj.ResponseBase64 = textOrBase64(a.Response)
				}
				dj.Attempts = append(dj.Attempts, aj)
			}
		}
		out.Deliveries = append(out.Deliveries, dj)
	}
	return out
}

// timeParam parses a time filter: RFC 3339, or a duration ago (24h). It answers 400 naming the
// parameter itself and reports false on a bad value.
func (a *adminAPI) timeParam(w http.ResponseWriter, name, s string) (time.Time, bool) {
	if s == "" {
		return time.Time{}, true
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, true
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return a.r.cfg.Now().Add(-d), true
	}
	badRequest(w, name+": "+strconv.Quote(s)+" is neither an RFC 3339 time nor a non-negative duration such as 24h")
	return time.Time{}, false
}

func (a *adminAPI) listMessages(w http.ResponseWriter, req *http.Request) {
	q := req.URL.Query()
	for name := range q {
		switch name {
		case "route", "target", "job_id", "state", "since", "until", "cursor", "limit":
		default:
			badRequest(w, name+": unknown parameter; filters are route, target, job_id, state, since, until, cursor, limit")
			return
		}
	}
	f := MessageFilter{Route: q.Get("route"), Target: q.Get("target"), JobID: q.Get("job_id"), State: q.Get("state"),
		Cursor: q.Get("cursor"), Limit: adminDefaultLimit}
	if f.State != "" && !validState(f.State) {
		badRequest(w, "state: "+strconv.Quote(f.State)+" is not one of queued, in_flight, retrying, delivered, dead")
		return
	}
	var ok bool
	if f.Since, ok = a.timeParam(w, "since", q.Get("since")); !ok {
		return
	}
	if f.Until, ok = a.timeParam(w, "until", q.Get("until")); !ok {
		return
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && !f.Since.Before(f.Until) {
		badRequest(w, "until: must be after since")
		return
	}
	if f.Limit, ok = limitParam(w, q.Get("limit"), f.Limit); !ok {
		return
	}
	ctx, cancel := a.storeCtx(req)
	defer cancel()
	page, next, err := a.r.cfg.Store.ListMessages(ctx, f, a.r.cfg.Now())
	if err != nil {
		a.storeFailed(w, "list messages", err, nil)
		return
	}
	out := make([]MessageJSON, 0, len(page))
	for _, rec := range page {
		out = append(out, messageOf(rec, false))
	}
	writeJSON(w, http.StatusOK, map[string]any{"messages": out, "next": next, "history": a.history > 0})
}

// missing answers a message ID the store does not have: 410 when the ID says it arrived before
// the retention window (its history, body included, was swept), else 404.
func (a *adminAPI) missing(w http.ResponseWriter, id string) {
	if at, ok := messageIDTime(id); ok && a.history > 0 && at.Before(a.r.cfg.Now().Add(-a.history)) {
		writeJSON(w, http.StatusGone, map[string]string{"error": fmt.Sprintf(
			"message %s arrived %s, more than history.retention (%v) ago: it and its body were swept", id,
			at.UTC().Format(time.RFC3339), a.history)})
		return
	}
	msg := "no message " + id
	if a.history == 0 {
		msg += " (history is off: a message leaves the store once every target has it)"
	}
	writeJSON(w, http.StatusNotFound, map[string]string{"error": msg})
}

// messageIDTime decodes the arrival time in a message ID (idSource.next); ok is false for anything that
// is not one.
func messageIDTime(id string) (time.Time, bool) {
	if len(id) != 26 {
		return time.Time{}, false
	}
	b, err := idEncoding.DecodeString(id)
	if err != nil || len(b) != 16 {
		return time.Time{}, false
	}
	return time.UnixMilli(int64(binary.BigEndian.Uint64(b[:8]) >> 16)), true
}

func (a *adminAPI) showMessage(w http.ResponseWriter, req *http.Request) {
	id := req.PathValue("id")
	withBody := false
	if s := req.URL.Query().Get("body"); s != "" {
		var err error
		if withBody, err = strconv.ParseBool(s); err != nil {
			badRequest(w, "body: "+strconv.Quote(s)+" is not true or false")
			return
		}
	}
	ctx, cancel := a.storeCtx(req)
	defer cancel()
	rec, err := a.r.cfg.Store.GetMessage(ctx, id, a.r.cfg.Now())
	switch {
	case errors.Is(err, ErrNotFound):
		a.missing(w, id)
		return
	case err != nil:
		a.storeFailed(w, "get message", err, nil)
		return
	}
	out := messageOf(rec, true)
	if withBody {
		out.Body, out.BodyBase64 = textOrBase64(rec.Body)
	}
	writeJSON(w, http.StatusOK, out)
}

// redeliver sends a stored message again to its targets whose delivery is delivered or dead
// (only ?target=, when given). The target sees the same delivery ID (X-Relay-Delivery-Id,
// Webhook-Id) and the attempt number continuing from the last attempt.
func (a *adminAPI) redeliver(w http.ResponseWriter, req *http.Request) {
	id, target := req.PathValue("id"), req.URL.Query().Get("target")
	ctx, cancel := a.storeCtx(req)
	defer cancel()
	done, err := a.r.cfg.Store.Redeliver(ctx, id, target, a.r.cfg.Now())
	switch {
	case errors.Is(err, ErrLive):
		writeJSON(w, http.StatusConflict, map[string]string{"error": "message " + id +
			" is still on its way to " + orAll(target) + " (queued, in flight or retrying): nothing to redeliver"})
		return
	case errors.Is(err, ErrNotFound):
		// The message may be there without that target (or without any delivery left: its dead
		// letter dropped), or gone.
		rec, gerr := a.r.cfg.Store.GetMessage(ctx, id, a.r.cfg.Now())
		if gerr != nil {
			a.missing(w, id)
			return
		}
		msg := "message " + id + " has no delivered or dead delivery to send again"
		if target != "" && !slices.Contains(rec.Targets, target) {
			msg = "message " + id + " has no delivery to target " + strconv.Quote(target)
		}
		writeJSON(w, http.StatusNotFound, map[string]string{"error": msg})
		return
	case err != nil:
		a.storeFailed(w, "redeliver", err, nil)
		return
	}
	var targets []string
	for _, d := range done {
		targets = append(targets, d[len(id)+1:])
	}
	a.r.log.Info("message redelivered", "message_id", id, "deliveries", done)
	a.r.wake(targets)
	writeJSON(w, http.StatusOK, map[string]any{"redelivered": done})
}

func orAll(target string) string {
	if target == "" {
		return "every target"
	}
	return "target " + strconv.Quote(target)
}
