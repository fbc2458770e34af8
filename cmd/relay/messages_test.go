package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// "Did the relay get job X?" against the real binary: relay messages list, show and redeliver
// with history on (the default).
func TestBinaryMessagesWorkflow(t *testing.T) {
	var fixed atomic.Bool
	var mu sync.Mutex
	var attempts []string // "<job> <attempt>" of every request the target answered 200
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if strings.Contains(string(body), "job-b") && !fixed.Load() {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, "bad job\n")
			return
		}
		var p struct{ ID string }
		_ = json.Unmarshal(body, &p)
		mu.Lock()
		attempts = append(attempts, p.ID+" "+r.Header.Get("X-Relay-Attempt"))
		mu.Unlock()
		_, _ = io.WriteString(w, "ok thanks")
	}))
	defer target.Close()
	dir := t.TempDir()
	p := startProc(t, nil, "serve", "-config", writeConfig(t, dir, target.URL, ""))
	admin := p.adminURL(t)

	ids := map[string]string{}
	for _, job := range []string{"job-a", "job-b", "job-a"} {
		status, body := postJSON(t, p.url()+"/hooks/fashn", fmt.Sprintf(`{"id":"%s","status":"completed"}`, job))
		if status/100 != 2 {
			t.Fatalf("post %s: %d %v", job, status, body)
		}
		if id, _ := body["id"].(string); id != "" {
			ids[job] = id
		}
	}
	messages := func(args ...string) (string, int) {
		return relayCmd(t, nil, append(append([]string{"messages"}, args...), "-admin", admin)...)
	}
	var out string
	waitUntil(t, "job-a delivered and job-b dead", func() bool {
		out, _ = messages("list")
		return strings.Contains(out, "app:delivered") && strings.Contains(out, "app:dead")
	})

	// The one-line answer: when, which route, how many duplicates, where it went.
	out, code := messages("list", "-job-id", "job-a")
	line := regexp.MustCompile(`(?m)^` + ids["job-a"] + `\s+\S+Z\s+fashn\s+job-a\s+succeeded\s+1\s+app:delivered$`)
	if code != 0 || !line.MatchString(out) || strings.Contains(out, "job-b") {
		t.Fatalf("list -job-id job-a (exit %d):\n%s", code, out)
	}
	if out, code := messages("list", "-job-id", "nope"); code != 0 || !strings.Contains(out, `no message with job ID "nope"`) {
		t.Fatalf("list -job-id nope (exit %d):\n%s", code, out)
	}
	if out, code := messages("list", "-state", "dead"); code != 0 || !strings.Contains(out, ids["job-b"]) || strings.Contains(out, ids["job-a"]) {
		t.Fatalf("list -state dead (exit %d):\n%s", code, out)
	}
	out, code = messages("list", "-json")
	var page struct {
		Messages []struct {
			ID string `json:"id"`
		} `json:"messages"`
	}
	if err := json.Unmarshal([]byte(out), &page); code != 0 || err != nil || len(page.Messages) != 2 ||
		page.Messages[0].ID != ids["job-b"] || page.Messages[1].ID != ids["job-a"] {
		t.Fatalf("list -json (exit %d, %v): want job-b then job-a:\n%s", code, err, out)
	}

	out, code = messages("show", ids["job-a"])
	if code != 0 || !strings.Contains(out, "app  DELIVERED") || !regexp.MustCompile(`(?m)^\s+1\s+\S+\s+\S+\s+200\s+-\s+ok thanks$`).MatchString(out) ||
		!strings.Contains(out, "duplicates:  1, last at") || strings.Contains(out, "body:\n") {
		t.Fatalf("show job-a (exit %d):\n%s", code, out)
	}
	// Flags after the ID work too.
	out, code = messages("show", ids["job-b"], "-body")
	if code != 0 || !strings.Contains(out, "app  DEAD") || !regexp.MustCompile(`(?m)^\s+1\s+.*\s400\s+target answered 400: bad job\s+bad job$`).MatchString(out) ||
		!strings.Contains(out, "body:\n{\n  \"id\": \"job-b\",") {
		t.Fatalf("show -body job-b (exit %d):\n%s", code, out)
	}

	fixed.Store(true)
	if out, code := messages("redeliver", ids["job-b"]); code != 0 || strings.TrimSpace(out) != "redelivered "+ids["job-b"]+".app" {
		t.Fatalf("redeliver (exit %d):\n%s", code, out)
	}
	waitUntil(t, "the redelivery", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return strings.Contains(strings.Join(attempts, ","), "job-b 2")
	})
	waitUntil(t, "job-b delivered", func() bool {
		out, _ = messages("show", ids["job-b"])
		return strings.Contains(out, "app  DELIVERED")
	})
	if out, code := messages("redeliver", "-target", "nope", ids["job-b"]); code != 1 || !strings.Contains(out, "404") || !strings.Contains(out, `target "nope"`) {
		t.Fatalf("redeliver to an unknown target (exit %d):\n%s", code, out)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"show", "nope"}, "404: no message nope"},
		{[]string{"list", "-state", "lost"}, "400: state:"},
		{[]string{"list", "-since", "yesterday"}, "400: since:"},
		{[]string{"show"}, "give exactly one message ID"},
		{[]string{"list", "job-a"}, "-job-id job-a"},
	} {
		if out, code := messages(tc.args...); code != 1 || !strings.Contains(out, tc.want) {
			t.Errorf("messages %v: exit %d, want 1 with %q:\n%s", tc.args, code, tc.want, out)
		}
	}
}
