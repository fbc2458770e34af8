package relay_test

import (
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hookrelay/hookrelay/filters"
	"github.com/hookrelay/hookrelay/relay"
)

func when(t *testing.T, status []string, body map[string]string) relay.Matcher {
	t.Helper()
	p, _ := filters.NewPreset("fashn", nil)
	w, err := filters.NewWhen(p, status, body)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// Per-target filters: alerts gets only failed jobs, archive everything, and a webhook that no
// target of its route wants is acknowledged, counted and not stored.
func TestPerTargetFilters(t *testing.T) {
	alerts, archive, pro := newRecorder(t, nil), newRecorder(t, nil), newRecorder(t, nil)
	all := route(t, "fashn", "fashn", "alerts", "archive")
	all.When = map[string]relay.Matcher{"alerts": when(t, []string{"failed"}, nil)}
	picky := route(t, "picky", "fashn", "alerts", "pro")
	picky.When = map[string]relay.Matcher{
		"alerts": when(t, []string{"failed"}, nil),
		"pro":    when(t, []string{"succeeded"}, map[string]string{"plan": "pro"}),
	}
	store := &countingStore{Store: openStore(t, filepath.Join(t.TempDir(), "relay.db"))}
	t.Cleanup(func() { store.Close() })
	r, url, _ := serve(t, relay.Config{Routes: []relay.Route{all, picky}, Store: store, PollInterval: 50 * time.Millisecond,
		Targets: []relay.Target{alerts.target("alerts"), archive.target("archive"), pro.target("pro")}})
	h := &harness{t: t, url: url, relay: r}

	for _, tc := range []struct {
		path, body string
		want       int
		filtered   bool
	}{
		{"/hooks/fashn", `{"id":"a","status":"failed"}`, http.StatusAccepted, false},
		{"/hooks/fashn", `{"id":"b","status":"completed"}`, http.StatusAccepted, false},
		{"/hooks/fashn", `{"id":"c","status":"completed"}`, http.StatusAccepted, false},
		{"/hooks/picky", `{"id":"d","status":"completed","plan":"pro"}`, http.StatusAccepted, false},
		{"/hooks/picky", `{"id":"e","status":"completed","plan":"free"}`, http.StatusAccepted, true},
		{"/hooks/picky", `{"id":"e","status":"completed","plan":"free"}`, http.StatusAccepted, true}, // again: filtered again
	} {
		a := h.post(tc.path, []byte(tc.body))
		if a.status != tc.want || (a.body["filtered"] == true) != tc.filtered {
			t.Fatalf("%s %s: %d %v", tc.path, tc.body, a.status, a.body)
		}
	}
	eventually(t, "the deliveries", func() bool {
		return len(alerts.got()) == 1 && len(archive.got()) == 3 && len(pro.got()) == 1
	})
	if got := string(alerts.got()[0].body); !strings.Contains(got, `"id":"a"`) {
		t.Errorf("alerts got %s, want only job a", got)
	}
	if got := string(pro.got()[0].body); !strings.Contains(got, `"id":"d"`) {
		t.Errorf("pro got %s, want only job d", got)
	}
	for _, m := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"hookrelay_webhooks_filtered_total", []string{"route", "picky"}, 2},
		{"hookrelay_webhooks_filtered_total", []string{"route", "fashn"}, 0},
		{"hookrelay_webhooks_received_total", []string{"route", "picky", "outcome", "filtered"}, 2},
		{"hookrelay_webhooks_received_total", []string{"route", "picky", "outcome", "accepted"}, 1},
		{"hookrelay_webhooks_received_total", []string{"route", "fashn", "outcome", "accepted"}, 3},
	} {
		// Counted just after the answer is written: wait for it rather than race it.
		eventually(t, fmt.Sprintf("%s%v = %v", m.name, m.labels, m.want), func() bool {
			return sample(t, h.relay, m.name, m.labels...) == m.want
		})
	}
	// The filtered webhooks never reached the store.
	if n := store.enqueues.Load(); n != 4 {
		t.Errorf("%d store writes, want 4: one per webhook some target wanted", n)
	}
}

func TestFilterForATargetNotOnTheRouteIsRefused(t *testing.T) {
	rec := newRecorder(t, nil)
	rt := route(t, "fashn", "fashn", "app")
	rt.When = map[string]relay.Matcher{"other": when(t, []string{"failed"}, nil)}
	_, err := relay.New(relay.Config{Routes: []relay.Route{rt}, Targets: []relay.Target{rec.target("app"), rec.target("other")},
		Store: openStore(t, filepath.Join(t.TempDir(), "r.db")), Lease: time.Minute})
	if err == nil || !strings.Contains(err.Error(), `a filter (when) for "other"`) {
		t.Fatalf("New: %v", err)
	}
}
