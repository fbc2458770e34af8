package relay_test

import (
	"context"
	"encoding/base32"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hookrelay/hookrelay/relay"
	"github.com/hookrelay/hookrelay/relay/boltstore"
)

// historyEnv is a running relay with history on, real targets and its admin API:
//
//	app      answers 400 "unknown job" (dead at once) until ok is set
//	billing  answers 200 "thanks"
//	later    answers 503 with Retry-After: 3600, so its deliveries stay live (retrying)
//
// Routes: fashn -> app; abstrakt -> app, billing, later.
type historyEnv struct {
	*adminEnv
	later *recorder
}

const historyToken = "history-admin-token-0123456789"

func newHistoryEnv(t *testing.T) *historyEnv {
	t.Helper()
	app := newSwitchable(t)
	billing := newRecorder(t, func(_ int, _ *http.Request, w http.ResponseWriter) { _, _ = io.WriteString(w, "thanks") })
	later := newRecorder(t, func(_ int, _ *http.Request, w http.ResponseWriter) {
		w.Header().Set("Retry-After", "3600")
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	lt := later.target("later")
	lt.Retry.MaxRetryAfter, lt.Retry.MaxAge = 2*time.Hour, 24*time.Hour
	path := filepath.Join(t.TempDir(), "relay.db")
	store, err := boltstore.Open(path, boltstore.Options{History: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	h := start(t, store, path, []relay.Route{route(t, "fashn", "fashn", "app"),
		route(t, "abstrakt", "abstrakt", "app", "billing", "later")},
		[]relay.Target{app.target("app"), billing.target("billing"), lt})
	srv := httptest.NewServer(h.relay.AdminHandler(relay.AdminOptions{Token: []byte(historyToken), HistoryRetention: time.Hour}))
	t.Cleanup(srv.Close)
	return &historyEnv{adminEnv: &adminEnv{harness: h, app: app, admin: srv.URL, token: historyToken,
		bodies: map[string]string{}}, later: later}
}

// postHook posts body to path and returns the message ID.
func (e *historyEnv) postHook(path, body string) string {
	e.t.Helper()
	a := e.post(path, []byte(body))
	if a.status != http.StatusAccepted && a.status != http.StatusOK {
		e.t.Fatalf("post %s: %d %v", path, a.status, a.body)
	}
	id, _ := a.body["id"].(string)
	return id
}

// message answers GET /v1/messages/{id}?query, failing unless it is 200.
func (e *historyEnv) message(id, query string) map[string]any {
	e.t.Helper()
	status, body := e.call(http.MethodGet, "/v1/messages/"+id+"?"+query)
	if status != http.StatusOK {
		e.t.Fatalf("GET message %s: %d %v", id, status, body)
	}
	return body
}

// deliveryOf returns a message's delivery to target from the API's answer.
func deliveryOf(t *testing.T, msg map[string]any, target string) map[string]any {
	t.Helper()
	for _, d := range msg["deliveries"].([]any) {
		if d := d.(map[string]any); d["target"] == target {
			return d
		}
	}
	t.Fatalf("no delivery to %s in %v", target, msg["deliveries"])
	return nil
}

func (e *historyEnv) listMessages(query string) ([]string, string) {
	e.t.Helper()
	status, body := e.call(http.MethodGet, "/v1/messages?"+query)
	if status != http.StatusOK {
		e.t.Fatalf("list messages ?%s: %d %v", query, status, body)
	}
	var out []string
	for _, m := range body["messages"].([]any) {
		m := m.(map[string]any)
		if _, ok := m["body"]; ok {
			e.t.Errorf("list ?%s: message %s with its body", query, m["id"])
		}
		out = append(out, m["id"].(string))
	}
	return out, body["next"].(string)
}

func TestAdminMessages(t *testing.T) {
	e := newHistoryEnv(t)
	job1 := e.postHook("/hooks/fashn", fashnBody(1))
	job2 := e.postHook("/hooks/fashn", fashnBody(2))
	abs := e.postHook("/hooks/abstrakt", abstraktBody)
	eventually(t, "every delivery settled or retrying", func() bool {
		rec, err := e.store.GetMessage(context.Background(), abs, time.Now())
		if err != nil || len(rec.Deliveries) != 3 {
			return false
		}

		states := map[string]string{}
		for _, d := range rec.Deliveries {
			states[d.Target] = d.State
		}
		return states["app"] == relay.StateDead && states["billing"] == relay.StateDelivered &&
			states["later"] == relay.StateRetrying && len(e.dead()) == 3
	})
	// A duplicate is counted on the original.
	if dup := e.postHook("/hooks/fashn", fashnBody(1)); dup != "" && dup != job1 {
		t.Fatalf("duplicate answered with a new message ID %s", dup)
	}

	t.Run("list", func(t *testing.T) {
		for _, tc := range []struct {
			query string
			want  []string
		}{
			{"", []string{abs, job2, job1}},
			{"job_id=job-1", []string{job1}},
			{"job_id=job_abc123xyz", []string{abs}},
			{"job_id=nope", nil},
			{"route=fashn", []string{job2, job1}},
			{"state=delivered", []string{abs}},
			{"state=retrying&target=later", []string{abs}},
			{"state=dead&target=app", []string{abs, job2, job1}},
			{"target=billing", []string{abs}},
			{"since=1h", []string{abs, job2, job1}},
			{"until=1h", nil},
		} {
			if got, next := e.listMessages(tc.query); !slices.Equal(got, tc.want) || next != "" {
				t.Errorf("?%s = %v next %q, want %v", tc.query, got, next, tc.want)
			}
		}
		page, next := e.listMessages("limit=2")
		if !slices.Equal(page, []string{abs, job2}) || next == "" {
			t.Fatalf("first page = %v next %q", page, next)
		}
		if page, next = e.listMessages("limit=2&cursor=" + next); !slices.Equal(page, []string{job1}) || next != "" {
			t.Fatalf("second page = %v next %q", page, next)
		}
	})

	t.Run("show", func(t *testing.T) {
		m := e.message(abs, "")
		if m["route"] != "abstrakt" || m["job_id"] != "job_abc123xyz" || m["size"] != float64(len(abstraktBody)) {
			t.Errorf("message = %v", m)
		}
		if _, ok := m["body"]; ok {
			t.Errorf("body without ?body=true: %v", m["body"])
		}
		app := deliveryOf(t, m, "app")
		if app["state"] != "dead" || app["dead_at"] == nil || app["last_status"] != 400.0 {
			t.Errorf("app = %v", app)
		}
		attempts := app["attempts"].([]any)
		if len(attempts) != 1 {
			t.Fatalf("app attempts = %v", attempts)
		}
		a := attempts[0].(map[string]any)
		if a["number"] != 1.0 || a["status"] != 400.0 || a["response"] != "unknown job\n" ||
			!strings.Contains(a["error"].(string), "400") {
			t.Errorf("app attempt = %v", a)
		}
		billing := deliveryOf(t, m, "billing")
		ba := billing["attempts"].([]any)
		if billing["state"] != "delivered" || billing["delivered_at"] == nil || len(ba) != 1 ||
			ba[0].(map[string]any)["response"] != "thanks" || ba[0].(map[string]any)["status"] != 200.0 {
			t.Errorf("billing = %v", billing)
		}
		later := deliveryOf(t, m, "later")
		if later["state"] != "retrying" || later["next_due"] == nil {
			t.Errorf("later = %v", later)
		}
		if m := e.message(abs, "body=true"); m["body"] != abstraktBody {
			t.Errorf("body = %v, want %q", m["body"], abstraktBody)
		}
		if m := e.message(job1, ""); m["duplicates"] != 1.0 || m["last_duplicate_at"] == nil {
			t.Errorf("job-1 duplicates = %v, last %v; want 1", m["duplicates"], m["last_duplicate_at"])
		}
	})

	t.Run("metrics", func(t *testing.T) {
		if got := e.metric(t); !strings.Contains(got, "\nhookrelay_dead_letters 3\n") {
			t.Errorf("metrics lack hookrelay_dead_letters 3:\n%s", grepLines(got, "dead_letters"))
		}
	})

	t.Run("redeliver", func(t *testing.T) {
		if status, body := e.call(http.MethodPost, "/v1/messages/"+abs+"/redeliver?target=later"); status != http.StatusConflict ||
			!strings.Contains(body["error"].(string), "still on its way") {
			t.Errorf("redeliver of a retrying delivery: %d %v, want 409", status, body)
		}
		if status, body := e.call(http.MethodPost, "/v1/messages/"+abs+"/redeliver?target=nope"); status != http.StatusNotFound ||
			!strings.Contains(body["error"].(string), `target "nope"`) {
			t.Errorf("redeliver to an unknown target: %d %v, want 404", status, body)
		}
		e.app.ok.Store(true)
		before := len(e.app.got())
		status, body := e.call(http.MethodPost, "/v1/messages/"+abs+"/redeliver?target=app")
		if status != http.StatusOK || !slices.Equal(toStrings(body["redelivered"]), []string{abs + ".app"}) {
			t.Fatalf("redeliver: %d %v", status, body)
		}
		eventually(t, "the redelivery", func() bool { return len(e.app.got()) > before })
		req := e.app.got()[before]
		if req.header.Get("X-Relay-Delivery-Id") != abs+".app" || req.header.Get("X-Relay-Attempt") != "2" ||
			string(req.body) != abstraktBody {
			t.Errorf("the target saw delivery %q attempt %q body %q; want the same ID, attempt 2, the body",
				req.header.Get("X-Relay-Delivery-Id"), req.header.Get("X-Relay-Attempt"), req.body)
		}
		eventually(t, "app delivered", func() bool {
			return deliveryOf(t, e.message(abs, ""), "app")["state"] == "delivered"
		})
		if n := len(deliveryOf(t, e.message(abs, ""), "app")["attempts"].([]any)); n != 2 {
			t.Errorf("app has %d attempts after the redelivery, want 2", n)
		}
		// Delivered now: it can be sent again, to every settled target (later is still live).
		before = len(e.app.got())
		status, body = e.call(http.MethodPost, "/v1/messages/"+abs+"/redeliver")
		if status != http.StatusOK || !slices.Equal(toStrings(body["redelivered"]), []string{abs + ".app", abs + ".billing"}) {
			t.Fatalf("redeliver all: %d %v", status, body)
		}
		eventually(t, "the second redelivery", func() bool { return len(e.app.got()) > before })
		if got := e.app.got()[before].header.Get("X-Relay-Attempt"); got != "3" {
			t.Errorf("second redelivery: attempt %q, want 3", got)
		}
		if got := e.metric(t); !strings.Contains(got, "\nhookrelay_dead_letters 2\n") {
			t.Errorf("metrics after redelivering a dead letter lack hookrelay_dead_letters 2:\n%s", grepLines(got, "dead_letters"))
		}
	})

	t.Run("errors", func(t *testing.T) {
		swept := oldMessageID(time.Now().Add(-2 * time.Hour))
		recent := oldMessageID(time.Now().Add(-time.Minute))
		for _, tc := range []struct {
			method, path string
			status       int
			want         string
		}{
			{http.MethodGet, "/v1/messages/nope", 404, "no message nope"},
			{http.MethodGet, "/v1/messages/" + recent, 404, "no message " + recent},
			{http.MethodPost, "/v1/messages/nope/redeliver", 404, "no message nope"},
			{http.MethodGet, "/v1/messages/" + swept, 410, "swept"},
			{http.MethodPost, "/v1/messages/" + swept + "/redeliver", 410, "swept"},
			{http.MethodGet, "/v1/messages?state=lost", 400, "state:"},
			{http.MethodGet, "/v1/messages?since=yesterday", 400, "since:"},
			{http.MethodGet, "/v1/messages?until=-5m", 400, "until:"},
			{http.MethodGet, "/v1/messages?since=1h&until=2h", 400, "until: must be after since"},
			{http.MethodGet, "/v1/messages?limit=0", 400, "limit:"},
			{http.MethodGet, "/v1/messages?limit=many", 400, "limit:"},
			{http.MethodGet, "/v1/messages?jobid=x", 400, "jobid: unknown parameter"},
			{http.MethodGet, "/v1/messages/" + abs + "?body=yes", 400, "body:"},
		} {
			status, body := e.call(tc.method, tc.path)
			msg, _ := body["error"].(string)
			if status != tc.status || !strings.Contains(msg, tc.want) {
				t.Errorf("%s %s: %d %v, want %d with %q", tc.method, tc.path, status, body, tc.status, tc.want)
			}
		}
		for _, p := range []string{"/v1/messages", "/v1/messages/" + abs} {
			if status, _ := e.callAs("", http.MethodGet, p); status != http.StatusUnauthorized {
				t.Errorf("GET %s without the token: %d, want 401", p, status)
			}
		}
		if status, _ := e.callAs("wrong-token-0123456789", http.MethodPost, "/v1/messages/"+abs+"/redeliver"); status != http.StatusUnauthorized {
			t.Errorf("redeliver with a wrong token: %d, want 401", status)
		}
		// A dropped dead letter leaves its message in history with nothing to send again.
		e.callOK(t, http.MethodDelete, "/v1/dead-letters/"+job2+".app")
		if status, body := e.call(http.MethodPost, "/v1/messages/"+job2+"/redeliver"); status != http.StatusNotFound ||
			!strings.Contains(body["error"].(string), "no delivered or dead delivery") {
			t.Errorf("redeliver after the dead letter was dropped: %d %v", status, body)
		}
	})
}

// oldMessageID is an ID as the relay makes them, for a message received at at.
func oldMessageID(at time.Time) string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(at.UnixMilli())<<16)
	return base32.NewEncoding("0123456789abcdefghjkmnpqrstvwxyz").WithPadding(base32.NoPadding).EncodeToString(b[:])
}

func toStrings(v any) []string {
	var out []string
	for _, s := range v.([]any) {
		out = append(out, s.(string))
	}
	return out
}

// metric returns the /metrics page.
func (e *historyEnv) metric(t *testing.T) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, e.admin+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+e.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("metrics: %d %v", resp.StatusCode, err)
	}
	return "\n" + string(raw)
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// With history off a delivered message is gone: the API says so (404, not 410), and a dead letter
// can still be redelivered.
func TestAdminMessagesHistoryOff(t *testing.T) {
	e := newAdminEnv(t, "")
	dead := e.dead()[0]
	id := dead.Message.ID
	status, body := e.call(http.MethodGet, "/v1/messages?")
	if status != http.StatusOK || len(body["messages"].([]any)) != 0 || body["history"] != false {
		t.Fatalf("list with history off: %d %v", status, body)
	}
	m := e.callOK(t, http.MethodGet, "/v1/messages/"+id)
	if d := m["deliveries"].([]any)[0].(map[string]any); d["state"] != "dead" {
		t.Fatalf("dead letter's message: %v", m)
	}
	e.app.ok.Store(true)
	e.billing.ok.Store(true)
	e.callOK(t, http.MethodPost, "/v1/messages/"+id+"/redeliver")
	eventually(t, "the message delivered and gone", func() bool {
		_, err := e.store.GetMessage(context.Background(), id, time.Now())
		return errors.Is(err, relay.ErrNotFound)
	})
	status, body = e.call(http.MethodGet, "/v1/messages/"+id)
	if status != http.StatusNotFound || !strings.Contains(body["error"].(string), "history is off") {
		t.Fatalf("delivered message with history off: %d %v", status, body)
	}
}

func (e *adminEnv) callOK(t *testing.T, method, path string) map[string]any {
	t.Helper()
	status, body := e.call(method, path)
	if status != http.StatusOK {
		t.Fatalf("%s %s: %d %v", method, path, status, body)
	}
	return body
}
