package relay_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookrelay/hookrelay/relay"
)

// switchable is a recorder target that answers 400 (a permanent failure: dead at once) until ok is set.
type switchable struct {
	*recorder
	ok atomic.Bool
}

func newSwitchable(t *testing.T) *switchable {
	s := &switchable{}
	s.recorder = newRecorder(t, func(_ int, _ *http.Request, w http.ResponseWriter) {
		if !s.ok.Load() {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, "unknown job\n")
		}
	})
	return s
}

// adminEnv is a running relay with dead letters and its admin API.
type adminEnv struct {
	*harness
	app, billing *switchable
	admin        string
	token        string
	bodies       map[string]string // dead letter ID -> the body sent
}

func fashnBody(n int) string {
	return fmt.Sprintf(`{"id":"job-%d","status":"completed","output":["https://cdn.example/o.png"],"error":null}`, n)
}

const abstraktBody = `{"job_id":"job_abc123xyz","status":"succeeded"}`

// newAdminEnv makes four dead letters: two fashn messages to app, one abstrakt message to app and
// billing. With a non-empty token the admin API requires it.
func newAdminEnv(t *testing.T, token string) *adminEnv {
	t.Helper()
	app, billing := newSwitchable(t), newSwitchable(t)
	h := startRelay(t, []relay.Route{route(t, "fashn", "fashn", "app"), route(t, "abstrakt", "abstrakt", "app", "billing")},
		app.target("app"), billing.target("billing"))
	var tok []byte
	if token != "" {
		tok = []byte(token)
	}
	srv := httptest.NewServer(h.relay.AdminHandler(relay.AdminOptions{Token: tok}))
	t.Cleanup(srv.Close)
	e := &adminEnv{harness: h, app: app, billing: billing, admin: srv.URL, token: token, bodies: map[string]string{}}
	for _, p := range []struct{ path, body string }{
		{"/hooks/fashn", fashnBody(1)}, {"/hooks/fashn", fashnBody(2)}, {"/hooks/abstrakt", abstraktBody},
	} {
		a := h.post(p.path, []byte(p.body))
		if a.status != http.StatusAccepted {
			t.Fatalf("post %s: %d %v", p.path, a.status, a.body)
		}
		id := a.body["id"].(string)
		e.bodies[relay.DeliveryID(id, "app")] = p.body
		if p.path == "/hooks/abstrakt" {
			e.bodies[relay.DeliveryID(id, "billing")] = p.body
		}
	}
	e.waitDead(4)
	return e
}

// dead lists the dead letters straight from the store.
func (e *adminEnv) dead() []*relay.Delivery {
	e.t.Helper()
	dead, err := e.store.ListDead(context.Background(), relay.DeadFilter{})
	if err != nil {
		e.t.Fatal(err)
	}
	return dead
}

func (e *adminEnv) waitDead(n int) {
	e.t.Helper()
	eventually(e.t, fmt.Sprintf("%d dead letters", n), func() bool { return len(e.dead()) == n })
}

// call sends a request to the admin API with the env's token and decodes the JSON answer.
func (e *adminEnv) call(method, path string) (int, map[string]any) {
	e.t.Helper()
	return e.callAs(e.token, method, path)
}

func (e *adminEnv) callAs(token, method, path string) (int, map[string]any) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.admin+path, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		e.t.Errorf("%s %s: Content-Type %q", method, path, ct)
	}
	var body map[string]any
	if err := json.Unmarshal(raw, &body); err != nil {
		e.t.Fatalf("%s %s: answer %d is not a JSON object: %q", method, path, resp.StatusCode, raw)
	}
	return resp.StatusCode, body
}

// list answers GET /v1/dead-letters?query and its items, failing unless it is 200.
func (e *adminEnv) list(query string) (items []map[string]any, next string) {
	e.t.Helper()
	status, body := e.call(http.MethodGet, "/v1/dead-letters?"+query)
	if status != http.StatusOK {
		e.t.Fatalf("list ?%s: %d %v", query, status, body)
	}
	raw, ok := body["dead_letters"].([]any)
	if !ok {
		e.t.Fatalf("list ?%s: dead_letters is %T, want an array", query, body["dead_letters"])
	}
	for _, it := range raw {
		items = append(items, it.(map[string]any))
	}
	return items, body["next"].(string)
}

func ids(items []map[string]any) []string {
	var out []string
	for _, it := range items {
		out = append(out, it["id"].(string))
	}
	slices.Sort(out)
	return out
}

func TestAdminListFiltersAndPages(t *testing.T) {
	e := newAdminEnv(t, "")
	all, next := e.list("")
	if len(all) != 4 || next != "" {
		t.Fatalf("list: %d items, next %q; want 4 and no next page", len(all), next)
	}
	for _, it := range all {
		id := it["id"].(string)
		body, known := e.bodies[id]
		if !known {
			t.Fatalf("unknown dead letter %s", id)
		}
		want := map[string]any{"last_status": 400.0, "attempt": 1.0, "body_bytes": float64(len(body)),
			"job_status": "succeeded", "content_type": "application/json", "source_addr": "127.0.0.1"}
		if strings.HasSuffix(id, ".billing") {
			want["target"], want["route"], want["provider"], want["job_id"] = "billing", "abstrakt", "abstrakt", "job_abc123xyz"
		} else {
			want["target"] = "app"
		}
		for k, v := range want {
			if it[k] != v {
				t.Errorf("%s: %s = %v, want %v", id, k, it[k], v)
			}
		}
		for _, k := range []string{"last_error", "received_at", "dead_at"} {
			if s, _ := it[k].(string); s == "" {
				t.Errorf("%s: %s missing", id, k)
			}
		}
		if !strings.Contains(it["last_error"].(string), "unknown job") {
			t.Errorf("%s: last_error %q", id, it["last_error"])
		}
		if _, has := it["body"]; has {
			t.Errorf("%s: the list carries bodies", id)
		}
	}

	now := time.Now()
	for _, tc := range []struct {
		query string
		want  int
	}{
		{"route=fashn", 2},
		{"route=abstrakt", 2},
		{"target=billing", 1},
		{"target=app", 3},
		{"route=abstrakt&target=app", 1},
		{"route=nope", 0},
		{"since=1h", 4},
		{"since=" + url.QueryEscape(now.Add(-time.Hour).Format(time.RFC3339)), 4},
		{"since=" + url.QueryEscape(now.Add(time.Hour).Format(time.RFC3339)), 0},
		{"since=1h&route=fashn&limit=1000", 2},
	} {
		if items, _ := e.list(tc.query); len(items) != tc.want {
			t.Errorf("list ?%s: %d items, want %d", tc.query, len(items), tc.want)
		}
	}

	// Pages of one: full pages point at the next, the page after the last is empty.
	var paged []map[string]any
	after, pages := "", 0
	for {
		items, next := e.list("limit=1&after=" + url.QueryEscape(after))
		pages++
		if len(items) > 1 || (len(items) == 1) != (next != "") {
			t.Fatalf("page %d: %d items with next %q", pages, len(items), next)
		}
		paged = append(paged, items...)
		if next == "" {
			break
		}
		if next != items[0]["id"] {
			t.Fatalf("page %d: next %q, want the page's last id %q", pages, next, items[0]["id"])
		}
		after = next
		if pages > 10 {
			t.Fatal("pagination does not end")
		}
	}
	if pages != 5 || !slices.Equal(ids(paged), ids(all)) {
		t.Fatalf("paged %d times through %v, want 5 pages through %v", pages, ids(paged), ids(all))
	}
	// A filter with pages.
	first, next := e.list("target=app&limit=2")
	rest, end := e.list("target=app&limit=2&after=" + url.QueryEscape(next))
	if len(first) != 2 || next == "" || len(rest) != 1 || end != "" {
		t.Fatalf("target=app by 2: %d (next %q) then %d (next %q)", len(first), next, len(rest), end)
	}
}

func TestAdminShow(t *testing.T) {
	e := newAdminEnv(t, "")
	for id, body := range e.bodies {
		status, got := e.call(http.MethodGet, "/v1/dead-letters/"+url.PathEscape(id))
		if status != http.StatusOK || got["id"] != id || got["body"] != body || got["body_bytes"] != float64(len(body)) {
			t.Errorf("show %s: %d %v, want its body %q", id, status, got, body)
		}
		if _, has := got["body_base64"]; has {
			t.Errorf("show %s: body_base64 for a UTF-8 body", id)
		}
	}

	// A body that is not UTF-8 comes back as base64.
	binary := []byte{0xff, 0xfe, 0x00, 'x', 0x80}
	msg := &relay.Message{ID: "bin1", Route: "fashn", Provider: "fashn", ReceivedAt: time.Now(), Body: binary,
		ContentType: "application/octet-stream", Targets: []string{"app"}}
	if _, err := e.store.Enqueue(context.Background(), msg, "", 0); err != nil {
		t.Fatal(err)
	}
	e.waitDead(5)
	id := relay.DeliveryID("bin1", "app")
	status, got := e.call(http.MethodGet, "/v1/dead-letters/"+id)
	if status != http.StatusOK {
		t.Fatalf("show %s: %d %v", id, status, got)
	}
	if _, has := got["body"]; has {
		t.Errorf("show %s: body as text for a binary body", id)
	}
	if raw, err := base64.StdEncoding.DecodeString(fmt.Sprint(got["body_base64"])); err != nil || string(raw) != string(binary) {
		t.Errorf("show %s: body_base64 %v does not round-trip (%v)", id, got["body_base64"], err)
	}

	status, got = e.call(http.MethodGet, "/v1/dead-letters/nope")
	if status != http.StatusNotFound || got["error"] != "no dead letter nope" {
		t.Fatalf("show unknown: %d %v", status, got)
	}
}

func TestAdminReplayOne(t *testing.T) {
	e := newAdminEnv(t, "")
	var id string
	for k := range e.bodies {
		if strings.HasSuffix(k, ".app") {
			id = k
			break
		}
	}
	before := len(e.app.got())
	e.app.ok.Store(true)
	status, got := e.call(http.MethodPost, "/v1/dead-letters/"+url.PathEscape(id)+"/replay")
	if status != http.StatusOK || got["replayed"] != 1.0 {
		t.Fatalf("replay %s: %d %v", id, status, got)
	}
	eventually(t, "the replayed delivery", func() bool { return len(e.app.got()) == before+1 })
	r := e.app.got()[before]
	if r.header.Get("X-Relay-Delivery-Id") != id || r.header.Get("X-Relay-Attempt") != "1" || string(r.body) != e.bodies[id] {
		t.Errorf("replayed delivery: id %q attempt %q body %q", r.header.Get("X-Relay-Delivery-Id"), r.header.Get("X-Relay-Attempt"), r.body)
	}
	eventually(t, "the ack", func() bool {
		return int(sample(t, e.relay, "hookrelay_delivery_attempts_total", "outcome", "delivered")) == 1
	})
	if _, err := e.store.GetDead(context.Background(), id); !errors.Is(err, relay.ErrNotFound) {
		t.Errorf("dead letter %s still there after its replay: %v", id, err)
	}
	if n := len(e.dead()); n != 3 {
		t.Errorf("%d dead letters left, want 3", n)
	}
	drained(t, e.store, "app", "billing")
	if n := len(e.app.got()); n != before+1 {
		t.Errorf("app got %d more requests, want 1", n-before)
	}

	status, got = e.call(http.MethodPost, "/v1/dead-letters/"+url.PathEscape(id)+"/replay")
	if status != http.StatusNotFound || got["error"] != "no dead letter "+id {
		t.Fatalf("replay again: %d %v, want 404", status, got)
	}
}

func TestAdminBulkReplay(t *testing.T) {
	e := newAdminEnv(t, "")
	for _, q := range []string{"", "?all=false", "?route=&target="} {
		status, got := e.call(http.MethodPost, "/v1/dead-letters/replay"+q)
		if status != http.StatusBadRequest || got["error"] != "give route, target or since, or all=true" {
			t.Errorf("replay %q: %d %v, want 400", q, status, got)
		}
	}
	if status, got := e.call(http.MethodPost, "/v1/dead-letters/replay?all=maybe"); status != http.StatusBadRequest ||
		!strings.Contains(fmt.Sprint(got["error"]), "all") {
		t.Errorf("all=maybe: %d %v, want 400 naming all", status, got)
	}
	if n := len(e.dead()); n != 4 {
		t.Fatalf("refused replays replayed something: %d dead letters left", n)
	}

	// By route, with the target working again.
	e.app.ok.Store(true)
	before := len(e.app.got())
	status, got := e.call(http.MethodPost, "/v1/dead-letters/replay?route=fashn")
	if status != http.StatusOK || got["replayed"] != 2.0 {
		t.Fatalf("replay route=fashn: %d %v, want 2", status, got)
	}
	eventually(t, "two replayed deliveries", func() bool { return len(e.app.got()) == before+2 })
	for _, r := range e.app.got()[before:] {
		if r.header.Get("X-Relay-Route") != "fashn" || r.header.Get("X-Relay-Attempt") != "1" {
			t.Errorf("replayed %s: route %q attempt %q", r.header.Get("X-Relay-Delivery-Id"), r.header.Get("X-Relay-Route"), r.header.Get("X-Relay-Attempt"))
		}
	}
	left := e.dead()
	if len(left) != 2 || left[0].Message.Route != "abstrakt" || left[1].Message.Route != "abstrakt" {
		t.Fatalf("left %d dead letters, want abstrakt's two", len(left))
	}

	// Everything, while billing still fails: each is replayed once, and billing's dies again.
	status, got = e.call(http.MethodPost, "/v1/dead-letters/replay?all=true")
	if status != http.StatusOK || got["replayed"] != 2.0 {
		t.Fatalf("replay all: %d %v, want 2", status, got)
	}
	eventually(t, "app's delivery", func() bool {
		return int(sample(t, e.relay, "hookrelay_delivery_attempts_total", "outcome", "delivered")) == 3
	})
	eventually(t, "billing's second death", func() bool {
		dead := e.dead()
		return len(dead) == 1 && dead[0].Target == "billing" && len(e.billing.got()) == 2
	})
	drained(t, e.store, "app", "billing")
	if n := len(e.billing.got()); n != 2 {
		t.Errorf("billing got %d requests, want 2 (the first and the replay)", n)
	}

	// By target, nothing matching.
	status, got = e.call(http.MethodPost, "/v1/dead-letters/replay?target=app")
	if status != http.StatusOK || got["replayed"] != 0.0 {
		t.Fatalf("replay target=app: %d %v, want 0", status, got)
	}
}

func TestAdminDrop(t *testing.T) {
	e := newAdminEnv(t, "")
	dead := e.dead()
	id := dead[0].ID
	before := len(e.app.got()) + len(e.billing.got())
	status, got := e.call(http.MethodDelete, "/v1/dead-letters/"+url.PathEscape(id))
	if status != http.StatusOK || got["dropped"] != 1.0 {
		t.Fatalf("drop %s: %d %v", id, status, got)
	}
	if status, _ := e.call(http.MethodGet, "/v1/dead-letters/"+url.PathEscape(id)); status != http.StatusNotFound {
		t.Errorf("show after drop: %d, want 404", status)
	}
	if status, got := e.call(http.MethodDelete, "/v1/dead-letters/"+url.PathEscape(id)); status != http.StatusNotFound || got["error"] != "no dead letter "+id {
		t.Errorf("drop again: %d %v, want 404", status, got)
	}
	if n := len(e.dead()); n != 3 {
		t.Errorf("%d dead letters left, want 3", n)
	}
	drained(t, e.store, "app", "billing")
	if n := len(e.app.got()) + len(e.billing.got()); n != before {
		t.Errorf("targets got %d requests after the drop, want none", n-before)
	}
}

func TestAdminAuth(t *testing.T) {
	const token = "s3cret-admin-token-0123456789"
	e := newAdminEnv(t, token)
	id := e.dead()[0].ID
	for _, tc := range []struct{ method, path string }{
		{http.MethodGet, "/readyz"},
		{http.MethodGet, "/v1/dead-letters"},
		{http.MethodGet, "/v1/dead-letters/" + id},
		{http.MethodPost, "/v1/dead-letters/" + id + "/replay"},
		{http.MethodPost, "/v1/dead-letters/replay?all=true"},
		{http.MethodDelete, "/v1/dead-letters/" + id},
		{http.MethodGet, "/metrics"},
		{http.MethodGet, "/nowhere"},
	} {
		for _, bad := range []string{"", "wrong", token + "x", token[:len(token)-1]} {
			status, got := e.callAs(bad, tc.method, tc.path)
			if status != http.StatusUnauthorized || got["error"] != "admin token required" {
				t.Errorf("%s %s with token %q: %d %v, want 401", tc.method, tc.path, bad, status, got)
			}
		}
	}
	if n := len(e.dead()); n != 4 {
		t.Fatalf("unauthorised requests changed the dead letters: %d left", n)
	}
	// Basic auth or a token without the scheme is not enough either.
	for _, h := range []string{token, "Basic " + token, "Bearer"} {
		req, _ := http.NewRequest(http.MethodGet, e.admin+"/v1/dead-letters", nil)
		req.Header.Set("Authorization", h)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("Authorization %q: %d, want 401", h, resp.StatusCode)
		}
	}

	if status, got := e.callAs("", http.MethodGet, "/healthz"); status != http.StatusOK || got["status"] != "ok" {
		t.Errorf("healthz without a token: %d %v, want 200", status, got)
	}
	if status, got := e.call(http.MethodGet, "/readyz"); status != http.StatusOK || got["status"] != "ready" {
		t.Errorf("readyz with the token: %d %v", status, got)
	}
	if items, _ := e.list(""); len(items) != 4 {
		t.Errorf("list with the token: %d items", len(items))
	}
	if status, got := e.call(http.MethodDelete, "/v1/dead-letters/"+id); status != http.StatusOK || got["dropped"] != 1.0 {
		t.Errorf("drop with the token: %d %v", status, got)
	}
}

func TestAdminReadyzAndStoreDown(t *testing.T) {
	e := newAdminEnv(t, "")
	id := e.dead()[0].ID
	if status, got := e.call(http.MethodGet, "/readyz"); status != http.StatusOK || got["status"] != "ready" {
		t.Fatalf("readyz: %d %v", status, got)
	}
	if err := e.store.Close(); err != nil {
		t.Fatal(err)
	}
	status, got := e.call(http.MethodGet, "/readyz")
	if status != http.StatusServiceUnavailable || got["status"] != "not ready" || fmt.Sprint(got["error"]) == "" {
		t.Fatalf("readyz with the store closed: %d %v, want 503 not ready with the error", status, got)
	}
	if status, got := e.call(http.MethodGet, "/healthz"); status != http.StatusOK || got["status"] != "ok" {
		t.Errorf("healthz with the store closed: %d %v, want 200: the process runs", status, got)
	}
	for _, tc := range []struct{ method, path string }{
		{http.MethodGet, "/v1/dead-letters"},
		{http.MethodGet, "/v1/dead-letters/" + id},
		{http.MethodPost, "/v1/dead-letters/" + id + "/replay"},
		{http.MethodPost, "/v1/dead-letters/replay?all=true"},
		{http.MethodDelete, "/v1/dead-letters/" + id},
	} {
		status, got := e.call(tc.method, tc.path)
		if status != http.StatusServiceUnavailable || got["error"] != "store unavailable" {
			t.Errorf("%s %s with the store closed: %d %v, want 503 store unavailable", tc.method, tc.path, status, got)
		}
	}
}

func TestAdminBadRequests(t *testing.T) {
	e := newAdminEnv(t, "")
	for _, tc := range []struct {
		method, path string
		status       int
		errContains  string
	}{
		{http.MethodGet, "/v1/dead-letters?limit=0", 400, "limit"},
		{http.MethodGet, "/v1/dead-letters?limit=-3", 400, "limit"},
		{http.MethodGet, "/v1/dead-letters?limit=ten", 400, "limit"},
		{http.MethodGet, "/v1/dead-letters?limit=1001", 400, "limit"},
		{http.MethodGet, "/v1/dead-letters?since=yesterday", 400, "since"},
		{http.MethodGet, "/v1/dead-letters?since=-1h", 400, "since"},
		{http.MethodGet, "/v1/dead-letters?since=2024-13-01T00:00:00Z", 400, "since"},
		{http.MethodGet, "/v1/dead-letters?after=gone", 400, "after"},
		{http.MethodPost, "/v1/dead-letters/replay?since=soon", 400, "since"},
		{http.MethodGet, "/v1/nothing", 404, "not found"},
		{http.MethodPut, "/v1/dead-letters/x", 405, "method not allowed"},
		{http.MethodPost, "/healthz", 405, "method not allowed"},
	} {
		status, got := e.call(tc.method, tc.path)
		if status != tc.status || !strings.Contains(fmt.Sprint(got["error"]), tc.errContains) {
			t.Errorf("%s %s: %d %v, want %d naming %q", tc.method, tc.path, status, got, tc.status, tc.errContains)
		}
	}
	if n := len(e.dead()); n != 4 {
		t.Fatalf("bad requests changed the dead letters: %d left", n)
	}
}

// The profiles are served only when asked for, and only to a holder of the token.
func TestAdminPprof(t *testing.T) {
	const token = "s3cret-admin-token-0123456789"
	rec := newRecorder(t, nil)
	h := startRelay(t, []relay.Route{route(t, "fashn", "fashn", "app")}, rec.target("app"))
	for _, tc := range []struct {
		name       string
		pprof      bool
		auth, path string
		want       int
		contains   string
	}{
		{"off", false, token, "/debug/pprof/", http.StatusNotFound, ""},
		{"no token", true, "", "/debug/pprof/", http.StatusUnauthorized, ""},
		{"wrong token", true, "wrong", "/debug/pprof/heap", http.StatusUnauthorized, ""},
		{"index", true, token, "/debug/pprof/", http.StatusOK, "goroutine"},
		{"goroutines", true, token, "/debug/pprof/goroutine?debug=1", http.StatusOK, "goroutine profile:"},
		{"cmdline", true, token, "/debug/pprof/cmdline", http.StatusOK, ""},
		{"symbol", true, token, "/debug/pprof/symbol", http.StatusOK, "num_symbols"},
		{"trace", true, token, "/debug/pprof/trace?seconds=0", http.StatusOK, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(h.relay.AdminHandler(relay.AdminOptions{Token: []byte(token), Pprof: tc.pprof}))
			defer srv.Close()
			req, _ := http.NewRequest(http.MethodGet, srv.URL+tc.path, nil)
			if tc.auth != "" {
				req.Header.Set("Authorization", "Bearer "+tc.auth)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want || !strings.Contains(string(body), tc.contains) {
				t.Fatalf("GET %s: %d %.200q, want %d containing %q", tc.path, resp.StatusCode, body, tc.want, tc.contains)
			}
		})
	}
}
