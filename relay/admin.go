package relay

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Admin API limits.
const (
	adminDefaultLimit = 100
	adminMaxLimit     = 1000
)

// deadLetterJSON is a dead letter as the admin API shows it. Every field is always present.
type deadLetterJSON struct {
	ID          string    `json:"id"`
	Route       string    `json:"route"`
	Provider    string    `json:"provider"`
	Target      string    `json:"target"`
	JobID       string    `json:"job_id"`
	JobStatus   string    `json:"job_status"`
	Attempt     int       `json:"attempt"`
	LastStatus  int       `json:"last_status"`
	LastError   string    `json:"last_error"`
	ReceivedAt  time.Time `json:"received_at"`
	DeadAt      time.Time `json:"dead_at"`
	ContentType string    `json:"content_type"`
	SourceAddr  string    `json:"source_addr"`
	BodyBytes   int       `json:"body_bytes"`
}

// deadLetterDetail is one dead letter with its body: as text when it is valid UTF-8, else base64.
type deadLetterDetail struct {
	deadLetterJSON
	Body       *string `json:"body,omitempty"`
	BodyBase64 *string `json:"body_base64,omitempty"`
}

func deadLetterOf(d *Delivery) deadLetterJSON {
	m := &d.Message
	return deadLetterJSON{
		ID: d.ID, Route: m.Route, Provider: m.Provider, Target: d.Target, JobID: m.JobID, JobStatus: m.JobStatus,
		Attempt: d.Attempt, LastStatus: d.LastStatus, LastError: d.LastError,
		ReceivedAt: m.ReceivedAt, DeadAt: d.DeadAt, ContentType: m.ContentType, SourceAddr: m.SourceAddr,
		BodyBytes: len(m.Body),
	}
}

// adminAPI serves the admin endpoints of one Relay.
type adminAPI struct {
	r         *Relay
	mux       *http.ServeMux
	tokenHash []byte // sha256 of the token; nil: no authentication
	reload    func(ctx context.Context) (ReloadResult, error)
	hosts     map[string]bool // lower-case names accepted in Host besides localhost and the local address
	csrf      *http.CrossOriginProtection
	history   time.Duration // the store's retention, to tell a swept message (410) from none (404)
}

// AdminOptions configure the admin API.
type AdminOptions struct {
	// Token is the bearer token every endpoint but /healthz requires. Nil: nothing is
	// authenticated; an empty non-nil token admits nobody but /healthz.
	Token []byte
	// Reload, when set, serves POST /v1/reload: it rereads the configuration and swaps it in
	// (see Relay.Reload). Its error is shown to the operator, so it must not hold a secret.
	Reload func(ctx context.Context) (ReloadResult, error)
	// Hosts are the names operators reach the admin API by, besides localhost and the address the
	// connection arrived on. A request for any other Host is refused (421): a web page that
	// rebinds its own name to this address cannot read the API.
	Hosts []string
	// Pprof serves Go's profiles under /debug/pprof/, behind the token like every other endpoint,
	// so an operator can profile a slow relay in place.
	Pprof bool
	// HistoryRetention is the store's history.retention (0: off), so that the message API can
	// tell a message swept after it from one that never was.
	HistoryRetention time.Duration
}

// AdminHandler is the operators' HTTP API: health and readiness probes, Prometheus metrics, the
// dead letters (list, show, replay one or by filter, drop) and reload. Every answer but /metrics
// is JSON.
func (r *Relay) AdminHandler(opt AdminOptions) http.Handler {
	a := &adminAPI{r: r, mux: http.NewServeMux(), reload: opt.Reload, hosts: map[string]bool{"localhost": true},
		csrf: http.NewCrossOriginProtection(), history: opt.HistoryRetention}
	for _, h := range opt.Hosts {
		a.hosts[strings.ToLower(strings.TrimSuffix(h, "."))] = true
	}
	if opt.Token != nil {
		h := sha256.Sum256(opt.Token)
		a.tokenHash = h[:]
	}
	a.mux.HandleFunc("GET /healthz", a.healthz)
	a.mux.HandleFunc("GET /readyz", a.readyz)
	a.mux.Handle("GET /metrics", promhttp.HandlerFor(r.cfg.Metrics, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(r.log.Handler(), slog.LevelWarn),
		ErrorHandling: promhttp.ContinueOnError, // a store that cannot say its depth spoils no other series
	}))
	if opt.Reload != nil {
		a.mux.HandleFunc("POST /v1/reload", a.reloadConfig)
	}
	a.mux.HandleFunc("GET /v1/dead-letters", a.list)
	a.mux.HandleFunc("GET /v1/dead-letters/{id}", a.show)
	a.mux.HandleFunc("POST /v1/dead-letters/{id}/replay", a.replayOne)
	a.mux.HandleFunc("POST /v1/dead-letters/replay", a.replayMatching)
	a.mux.HandleFunc("DELETE /v1/dead-letters/{id}", a.drop)
	a.mux.HandleFunc("GET /v1/messages", a.listMessages) // admin_messages.go
	a.mux.HandleFunc("GET /v1/messages/{id}", a.showMessage)
	a.mux.HandleFunc("POST /v1/messages/{id}/redeliver", a.redeliver)
	a.mux.Handle("GET /ui/", uiHandler()) // ui.go: static, the token is asked for by the page
	a.mux.Handle("GET /ui", http.RedirectHandler("/ui/", http.StatusMovedPermanently))
	if opt.Pprof {
		a.mux.HandleFunc("GET /debug/pprof/", pprof.Index) // also serves heap, goroutine, allocs...
		a.mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		a.mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		a.mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		a.mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	return a
}

func (a *adminAPI) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	// Before the token: with none (the loopback default), these are what stop a browser on this
	// host from being used against the API.
	if !a.hostAllowed(req) {
		writeJSON(w, http.StatusMisdirectedRequest, map[string]string{"error": "the admin API does not answer to this Host; add it to admin.hosts"})
		return
	}
	if err := a.csrf.Check(req); err != nil {
		writeJSON(w, http.StatusForbidden, map[string]string{"error": "cross-site request refused"})
		return
	}
	_, pattern := a.mux.Handler(req)
	if pattern != "GET /healthz" && pattern != "GET /ui/" && pattern != "GET /ui" && !a.authorized(req) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="hookrelay admin"`)
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "admin token required"})
		return
	}
	if pattern == "" {
		// The mux would answer 404 or 405 in plain text: keep its status and Allow, answer JSON.
		cw := &captureWriter{header: http.Header{}}
		a.mux.ServeHTTP(cw, req)
		if allow := cw.header.Get("Allow"); allow != "" {
			w.Header().Set("Allow", allow)
		}
		status := cw.status
		if status == 0 {
			status = http.StatusNotFound
		}
		writeJSON(w, status, map[string]string{"error": strings.ToLower(http.StatusText(status))})
		return
	}
	a.mux.ServeHTTP(w, req)
}

// hostAllowed reports whether req's Host names this API: localhost, a configured name, or the IP
// address the connection arrived on. Any other name may be one an attacker's page rebound to us.
func (a *adminAPI) hostAllowed(req *http.Request) bool {
	host := req.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if a.hosts[host] {
		return true
	}
	ip, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"))
	if err != nil {
		return false
	}
	local, ok := req.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if !ok {
		return false
	}
	lap, err := netip.ParseAddrPort(local.String())
	return err == nil && lap.Addr().Unmap().WithZone("") == ip.Unmap().WithZone("")
}

// authorized reports whether req carries the admin token, comparing in constant time.
func (a *adminAPI) authorized(req *http.Request) bool {
	if a.tokenHash == nil {
		return true
	}
	auth := req.Header.Get("Authorization")
	const scheme = "Bearer "
	if len(auth) <= len(scheme) || !strings.EqualFold(auth[:len(scheme)], scheme) {
		return false
	}
	got := sha256.Sum256([]byte(auth[len(scheme):]))
	return subtle.ConstantTimeCompare(got[:], a.tokenHash) == 1
}

// captureWriter records the status and headers the mux's own error handlers write.
type captureWriter struct {
	header http.Header
	status int
}

func (c *captureWriter) Header() http.Header { return c.header }
func (c *captureWriter) WriteHeader(status int) {
	if c.status == 0 {
		c.status = status
	}
}
func (c *captureWriter) Write(b []byte) (int, error) {
	c.WriteHeader(http.StatusOK)
	return len(b), nil
}

// storeCtx bounds one store operation.
func (a *adminAPI) storeCtx(req *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(req.Context(), a.r.cfg.StoreTimeout)
}

// storeFailed logs err and answers 503 without its details.
func (a *adminAPI) storeFailed(w http.ResponseWriter, op string, err error, extra map[string]any) {
	a.r.log.Error("admin: store operation failed", "op", op, "error", err)
	body := map[string]any{"error": "store unavailable"}
	for k, v := range extra {
		body[k] = v
	}
	writeJSON(w, http.StatusServiceUnavailable, body)
}

func badRequest(w http.ResponseWriter, msg string) {
	writeJSON(w, http.StatusBadRequest, map[string]string{"error": msg})
}

func notFound(w http.ResponseWriter, id string) {
	writeJSON(w, http.StatusNotFound, map[string]string{"error": "no dead letter " + id})
}

func (a *adminAPI) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (a *adminAPI) readyz(w http.ResponseWriter, req *http.Request) {
	ctx, cancel := a.storeCtx(req)
	defer cancel()
	if err := a.r.Ready(ctx); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

// reloadConfig answers 200 with what changed, or 422 with why the new configuration was refused
// (the old one stays).
func (a *adminAPI) reloadConfig(w http.ResponseWriter, req *http.Request) {
	res, err := a.reload(req.Context())
	if err != nil {
		writeJSON(w, http.StatusUnprocessableEntity, map[string]string{"error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "reloaded", "result": res, "lines": res.Lines()})
}

// nonNil makes an empty list encode as [] rather than null.
func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// filter parses route, target and since; it answers 400 itself and reports false on a bad value.
func (a *adminAPI) filter(w http.ResponseWriter, req *http.Request) (DeadFilter, bool) {
	q := req.URL.Query()
	f := DeadFilter{Route: q.Get("route"), Target: q.Get("target")}
	var ok bool
	f.Since, ok = a.timeParam(w, "since", q.Get("since"))
	return f, ok
}

// limitParam parses a page size; it answers 400 itself and reports false on a bad value.
func limitParam(w http.ResponseWriter, s string, def int) (int, bool) {
	if s == "" {
		return def, true
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > adminMaxLimit {
		badRequest(w, "limit: "+strconv.Quote(s)+" is not a number from 1 to "+strconv.Itoa(adminMaxLimit))
		return 0, false
	}
	return n, true
}

func (a *adminAPI) list(w http.ResponseWriter, req *http.Request) {
	f, ok := a.filter(w, req)
	if !ok {
		return
	}
	q := req.URL.Query()
	if f.Limit, ok = limitParam(w, q.Get("limit"), adminDefaultLimit); !ok {
		return
	}
	f.After = q.Get("after")
	ctx, cancel := a.storeCtx(req)
	defer cancel()
	dead, err := a.r.cfg.Store.ListDead(ctx, f)
	switch {
	case errors.Is(err, ErrNotFound) && f.After != "":
		badRequest(w, "after: no dead letter "+f.After+" (replayed or dropped since?): list again from the start")
		return
	case err != nil:
		a.storeFailed(w, "list dead", err, nil)
		return
	}
	out := make([]deadLetterJSON, 0, len(dead))
	for _, d := range dead {
		out = append(out, deadLetterOf(d))
	}
	next := ""
	if len(dead) == f.Limit {
		next = dead[len(dead)-1].ID
	}
	writeJSON(w, http.StatusOK, map[string]any{"dead_letters": out, "next": next})
}

func (a *adminAPI) show(w http.ResponseWriter, req *http.Request) {
	id := req.PathValue("id")
	ctx, cancel := a.storeCtx(req)
	defer cancel()
	d, err := a.r.cfg.Store.GetDead(ctx, id)
	switch {
	case errors.Is(err, ErrNotFound):
		notFound(w, id)
		return
	case err != nil:
		a.storeFailed(w, "get dead", err, nil)
		return
	}
	out := deadLetterDetail{deadLetterJSON: deadLetterOf(d)}
	out.Body, out.BodyBase64 = textOrBase64(d.Message.Body)
	writeJSON(w, http.StatusOK, out)
}

// replay puts one dead letter back in its target's queue and wakes the target's dispatcher.
func (a *adminAPI) replay(req *http.Request, id, target string) error {
	ctx, cancel := a.storeCtx(req)
	defer cancel()
	if err := a.r.cfg.Store.ReplayDead(ctx, id, a.r.cfg.Now()); err != nil {
		return err
	}
	a.r.log.Info("dead letter replayed", "delivery_id", id, "target", target)
	a.r.wake([]string{target})
	return nil
}

func (a *adminAPI) replayOne(w http.ResponseWriter, req *http.Request) {
	id := req.PathValue("id")
	ctx, cancel := a.storeCtx(req)
	d, err := a.r.cfg.Store.GetDead(ctx, id)
	cancel()
	if err == nil {
		err = a.replay(req, id, d.Target)
	}
	switch {
	case errors.Is(err, ErrNotFound):
		notFound(w, id)
	case err != nil:
		a.storeFailed(w, "replay dead", err, nil)
	default:
		writeJSON(w, http.StatusOK, map[string]int{"replayed": 1})
	}
}

// replayMatching replays every dead letter that matches the filter when the request arrives. It
// lists them all first, then replays them: a replayed letter that dies again is not replayed twice.
func (a *adminAPI) replayMatching(w http.ResponseWriter, req *http.Request) {
	f, ok := a.filter(w, req)
	if !ok {
		return
	}
	all := false
	if s := req.URL.Query().Get("all"); s != "" {
		var err error
		if all, err = strconv.ParseBool(s); err != nil {
			badRequest(w, "all: "+strconv.Quote(s)+" is not true or false")
			return
		}
	}
	if f.Route == "" && f.Target == "" && f.Since.IsZero() && !all {
		badRequest(w, "give route, target or since, or all=true")
		return
	}

	// Collect first. A cursor that vanishes under us (another operator replayed or dropped it)
	// makes us list again from the start; seen keeps each letter once.
	type match struct{ id, target string }
	var matches []match
	seen := map[string]bool{}
	f.Limit = adminMaxLimit
	for restarts := 0; ; {
		ctx, cancel := a.storeCtx(req)
		page, err := a.r.cfg.Store.ListDead(ctx, f)
		cancel()
		if errors.Is(err, ErrNotFound) && f.After != "" && restarts < 10 {
			restarts++
			f.After = ""
			continue
		}
		if err != nil {
			a.storeFailed(w, "list dead", err, nil)
			return
		}
		for _, d := range page {
			if !seen[d.ID] {
				seen[d.ID] = true
				matches = append(matches, match{d.ID, d.Target})
			}
		}
		if len(page) < f.Limit {
			break
		}
		f.After = page[len(page)-1].ID
	}

	replayed := 0
	var targets []string
	for _, m := range matches {
		ctx, cancel := a.storeCtx(req)
		err := a.r.cfg.Store.ReplayDead(ctx, m.id, a.r.cfg.Now())
		cancel()
		switch {
		case errors.Is(err, ErrNotFound): // replayed or dropped meanwhile
			continue
		case err != nil:
			a.r.wake(targets)
			a.storeFailed(w, "replay dead", err, map[string]any{"replayed": replayed})
			return
		}
		replayed++
		if !slices.Contains(targets, m.target) {
			targets = append(targets, m.target)
		}
	}
	a.r.wake(targets)
	a.r.log.Info("dead letters replayed", "count", replayed, "route", f.Route, "target", f.Target, "since", f.Since)
	writeJSON(w, http.StatusOK, map[string]int{"replayed": replayed})
}

func (a *adminAPI) drop(w http.ResponseWriter, req *http.Request) {
	id := req.PathValue("id")
	ctx, cancel := a.storeCtx(req)
	defer cancel()
	err := a.r.cfg.Store.DropDead(ctx, id)
	switch {
	case errors.Is(err, ErrNotFound):
		notFound(w, id)
	case err != nil:
		a.storeFailed(w, "drop dead", err, nil)
	default:
		a.r.log.Info("dead letter dropped", "delivery_id", id)
		writeJSON(w, http.StatusOK, map[string]int{"dropped": 1})
	}
}
