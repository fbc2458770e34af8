package relay_test

import (
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/hookrelay/hookrelay/filters"
	"github.com/hookrelay/hookrelay/relay"
)

// Reloading while senders keep posting drops nothing and answers no 5xx: every acknowledged
// webhook reaches a target, the new token and route work at once, and the old token stops working.
func TestReloadUnderLoad(t *testing.T) {
	oldApp, newApp := newRecorder(t, nil), newRecorder(t, nil)
	tokenRoute := func(token string) relay.Route {
		rt := route(t, "fashn", "fashn", "app")
		rt.Verifier = must[*filters.URLToken](t)(filters.NewURLToken([]string{token}, "token"))
		return rt
	}
	h := startRelay(t, []relay.Route{tokenRoute("old-token-0123456789")}, oldApp.target("app"), newApp.target("other"))

	var (
		acked   sync.Map // job ID -> true
		nAcked  atomic.Int64
		bad     atomic.Int64
		stop    atomic.Bool
		senders sync.WaitGroup
		token   atomic.Value
		// rotating is set from before the reload that retires the old token until the senders
		// have the new one: a 401 for the old token in that window is the sender's, not a bug.
		rotating atomic.Bool
	)
	token.Store("old-token-0123456789")
	for w := range 8 {
		senders.Go(func() {
			for i := 0; !stop.Load(); i++ {
				id := "w" + strconv.Itoa(w) + "-" + strconv.Itoa(i)
				tok := token.Load().(string)
				resp, err := http.Post(h.url+"/hooks/fashn?token="+tok, "application/json",
					strings.NewReader(`{"id":"`+id+`","status":"completed"}`))
				if err != nil {
					bad.Add(1)
					continue
				}
				resp.Body.Close()
				switch {
				case resp.StatusCode == http.StatusAccepted:
					acked.Store(id, true)
					nAcked.Add(1)
				case resp.StatusCode == http.StatusUnauthorized && (rotating.Load() || tok != token.Load().(string)):
					// sent with the token the reload just retired: the sender's problem, not a loss
				default:
					t.Errorf("job %s: status %d", id, resp.StatusCode)
					bad.Add(1)
				}
			}
		})
	}
	// Each phase runs until the senders have had more webhooks acknowledged: load across every
	// reload, however fast the machine.
	ackedMore := func(n int64) {
		t.Helper()
		want := nAcked.Load() + n
		eventually(t, strconv.FormatInt(n, 10)+" more acknowledgements", func() bool { return nAcked.Load() >= want })
	}
	ackedMore(20)

	// An invalid routing is refused and changes nothing.
	broken := tokenRoute("new-token-0123456789")
	broken.Targets = []string{"missing"}
	if _, err := h.relay.Reload(relay.Routing{Routes: []relay.Route{broken},
		Targets: []relay.Target{oldApp.target("app")}}); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("reload with an unknown target: %v, want an error naming it", err)
	}
	ackedMore(10)

	// The new routing: the token rotates, app moves to the new server, a route appears and the
	// target "other" goes.
	moved := newApp.target("app")
	extra := route(t, "fal", "fal", "app")
	extra.Verifier = must[*filters.URLToken](t)(filters.NewURLToken([]string{"fal-token-0123456789"}, "token"))
	rotating.Store(true)
	res, err := h.relay.Reload(relay.Routing{Routes: []relay.Route{tokenRoute("new-token-0123456789"), extra},
		Targets: []relay.Target{moved}})
	if err != nil {
		t.Fatal(err)
	}
	token.Store("new-token-0123456789")
	rotating.Store(false)
	if want := (relay.Changes{Changed: []string{"app"}, Removed: []string{"other"}}); !reflect.DeepEqual(res.Targets, want) {
		t.Errorf("reload result %+v, want app changed, other removed", res)
	}
	// Reloading the same targets again restarts nothing.
	if res, err := h.relay.Reload(relay.Routing{Routes: []relay.Route{tokenRoute("new-token-0123456789"), extra},
		Targets: []relay.Target{newApp.target("app")}}); err != nil || !reflect.DeepEqual(res, relay.ReloadResult{}) {
		t.Errorf("identical reload: %+v, %v; want nothing restarted", res, err)
	}
	// A target configured again is added, not restarted.
	if res, err := h.relay.Reload(relay.Routing{Routes: []relay.Route{tokenRoute("new-token-0123456789"), extra},
		Targets: []relay.Target{newApp.target("app"), newApp.target("other")}}); err != nil ||
		!reflect.DeepEqual(res.Targets, relay.Changes{Added: []string{"other"}}) {
		t.Errorf("reload adding a target: %+v, %v; want other added", res, err)
	}
	ackedMore(30) // with the new token: these go to the new URL
	stop.Store(true)
	senders.Wait()

	if a := h.post("/hooks/fashn?token=old-token-0123456789", []byte(fashnDone)); a.status != http.StatusUnauthorized {
		t.Errorf("old token after the reload: %d, want 401", a.status)
	}
	if a := h.post("/hooks/fal?token=fal-token-0123456789",
		[]byte(`{"request_id":"r1","status":"OK","payload":{}}`)); a.status != extra.AckStatus {
		t.Errorf("new route: %d %v, want %d", a.status, a.body, extra.AckStatus)
	}

	want := map[string]bool{}
	acked.Range(func(k, _ any) bool { want[k.(string)] = true; return true })
	if len(want) < 50 || bad.Load() != 0 {
		t.Fatalf("%d acknowledged, %d bad answers: the load did not run cleanly", len(want), bad.Load())
	}
	delivered := func() map[string]int {
		got := map[string]int{}
		for _, rec := range []*recorder{oldApp, newApp} {
			for _, r := range rec.got() {
				got[r.header.Get("X-Relay-Job-Id")]++
			}
		}
		return got
	}
	eventually(t, "every acknowledged webhook delivered", func() bool {
		got := delivered()
		for id := range want {
			if got[id] == 0 {
				return false
			}
		}
		return true
	})
	drained(t, h.store, "app") // no delivery left to come: the counts are final
	for id, n := range delivered() {
		if n > 1 {
			t.Errorf("job %s delivered %d times", id, n)
		}
	}
	n := len(newApp.got())
	if n == 0 {
		t.Error("nothing reached the target's new URL")
	}
	t.Logf("%d acknowledged across the reload; %d delivered to the old URL, %d to the new", len(want), len(oldApp.got()), n)
}
