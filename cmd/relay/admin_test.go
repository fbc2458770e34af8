package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

var adminRe = regexp.MustCompile(`"msg":"admin listening","addr":"([^"]+)"`)

func (p *proc) adminURL(t *testing.T) string {
	t.Helper()
	var m []string
	waitUntil(t, "the admin listener", func() bool { m = adminRe.FindStringSubmatch(p.logs()); return m != nil })
	return "http://" + m[1]
}

// relayCmd runs the binary to completion and returns its output and exit code.
func relayCmd(t *testing.T, env []string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(relayBin, args...)
	cmd.Env = append(cmd.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), 0
}

// The operator's dead-letter workflow against the real binary: deliveries the target refuses are
// dead-lettered, listed, shown, replayed once the target is fixed, and dropped.
func TestBinaryDeadLetterWorkflow(t *testing.T) {
	var fixed atomic.Bool
	var mu sync.Mutex
	var got []string
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if !fixed.Load() {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		mu.Lock()
		got = append(got, r.Header.Get("X-Relay-Attempt")+" "+string(body))
		mu.Unlock()
	}))
	defer target.Close()
	dir := t.TempDir()
	cfg := writeConfig(t, dir, target.URL, "")
	p := startProc(t, nil, "serve", "-config", cfg)
	admin := p.adminURL(t)

	for _, job := range []string{"job-a", "job-b"} {
		if status, _ := postJSON(t, p.url()+"/hooks/fashn", fmt.Sprintf(`{"id":"%s","status":"completed"}`, job)); status != http.StatusAccepted {
			t.Fatalf("post %s: %d", job, status)
		}
	}
	var list string
	waitUntil(t, "two dead letters", func() bool {
		list, _ = relayCmd(t, nil, "dlq", "list", "-admin", admin)
		return strings.Count(list, ".app ") == 2
	})
	ids := regexp.MustCompile(`(?m)^(\S+\.app)\s+fashn\s+app\s+(job-[ab])\s+1\s+400`).FindAllStringSubmatch(list, -1)
	if len(ids) != 2 {
		t.Fatalf("list does not show both dead letters with status 400:\n%s", list)
	}
	byJob := map[string]string{ids[0][2]: ids[0][1], ids[1][2]: ids[1][1]}

	out, code := relayCmd(t, nil, "dlq", "show", "-admin", admin, byJob["job-a"])
	if code != 0 || !strings.Contains(out, `job-a`) || !strings.Contains(out, `"last_status": 400`) {
		t.Fatalf("show (exit %d):\n%s", code, out)
	}
	if out, code := relayCmd(t, nil, "dlq", "show", "-admin", admin, "nope"); code == 0 || !strings.Contains(out, "404") {
		t.Fatalf("show of an unknown ID (exit %d):\n%s", code, out)
	}

	fixed.Store(true)
	if out, code := relayCmd(t, nil, "dlq", "replay", "-admin", admin, byJob["job-a"]); code != 0 || !strings.Contains(out, "replayed 1") {
		t.Fatalf("replay (exit %d):\n%s", code, out)
	}
	waitUntil(t, "the replayed delivery", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == 1 })
	if mu.Lock(); !strings.HasPrefix(got[0], "1 ") || !strings.Contains(got[0], "job-a") {
		t.Errorf("replayed delivery %q, want job-a as attempt 1", got[0])
	}
	mu.Unlock()
	if out, code := relayCmd(t, nil, "dlq", "replay", "-admin", admin); code == 0 || !strings.Contains(out, "-all") {
		t.Fatalf("replay without ID or filter must refuse (exit %d):\n%s", code, out)
	}
	if out, code := relayCmd(t, nil, "dlq", "drop", "-admin", admin, byJob["job-b"]); code != 0 || !strings.Contains(out, "dropped") {
		t.Fatalf("drop (exit %d):\n%s", code, out)
	}
	if list, _ := relayCmd(t, nil, "dlq", "list", "-admin", admin); strings.Contains(list, ".app ") {
		t.Fatalf("dead letters left after replay and drop:\n%s", list)
	}
	if out, code := relayCmd(t, nil, "health", "-admin", admin); code != 0 || !strings.Contains(out, "ready") {
		t.Fatalf("health (exit %d):\n%s", code, out)
	}
	if out, code := relayCmd(t, nil, "health", "-admin", "http://127.0.0.1:1"); code == 0 {
		t.Fatalf("health against nothing exited 0:\n%s", out)
	}
}
