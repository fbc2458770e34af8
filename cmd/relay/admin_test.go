package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
)

func (p *proc) adminURL(t *testing.T) string {
	t.Helper()
	if p.bound.Admin == "" {
		t.Fatalf("the relay has no admin listener:\n%s", p.logs())
	}
	return "http://" + p.bound.Admin
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
			_, _ = io.WriteString(w, "the field customer_reference is required by this endpoint,\nand the payload has none (end)")
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
	// The whole error, on one line.
	if !strings.Contains(list, "target answered 400: the field customer_reference is required by this endpoint, and the payload has none (end)\n") {
		t.Fatalf("list cuts the error short:\n%s", list)
	}
	byJob := map[string]string{ids[0][2]: ids[0][1], ids[1][2]: ids[1][1]}

	out, code := relayCmd(t, nil, "dlq", "show", "-admin", admin, byJob["job-a"])
	if code != 0 || !strings.Contains(out, `job-a`) || !strings.Contains(out, `"last_status": 400`) {
		t.Fatalf("show (exit %d):\n%s", code, out)
	}
	// Flags may follow the ID (before this, -admin after it was ignored and the default address used).
	if out, code := relayCmd(t, nil, "dlq", "show", byJob["job-a"], "-admin", admin); code != 0 || !strings.Contains(out, `job-a`) {
		t.Fatalf("show with the flags after the ID (exit %d):\n%s", code, out)
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

// A full scenario with every kind of secret configured: none of them appears in the logs or in
// relay check's output.
func TestBinarySecretsNeverLogged(t *testing.T) {
	secrets := map[string]string{
		"HOOKRELAY_T_SIGNING": "whsec_c2lnbmluZy1zZWNyZXQtdmFsdWUtMTIzNDU2Nzg=",
		"HOOKRELAY_T_GITHUB":  "github-secret-gh-9876543210zyx",
		"HOOKRELAY_T_TOKEN":   "url-token-value-0123456789abcdef",
		"HOOKRELAY_T_ADMIN":   "admin-token-value-0123456789",
	}
	var env []string
	for k, v := range secrets {
		env = append(env, k+"="+v)
	}
	var mu sync.Mutex
	n := 0
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		mu.Lock()
		n++
		first := n == 1
		mu.Unlock()
		if first {
			w.WriteHeader(http.StatusBadRequest) // one dead letter, with its log lines
		}
	}))
	defer target.Close()
	dir := t.TempDir()
	cfg := writeConfig(t, dir, target.URL, "    signing_secret_env: HOOKRELAY_T_SIGNING\n")
	text := strings.Replace(mustRead(t, cfg), "admin: {listen: 127.0.0.1:0}", "admin: {listen: 127.0.0.1:0, token_env: HOOKRELAY_T_ADMIN}", 1)
	text += `  - name: gh
    path: /hooks/gh
    provider: fashn
    targets: [app]
    verify: {type: github, secrets_env: [HOOKRELAY_T_GITHUB]}
  - name: tok
    path: /hooks/tok
    provider: fashn
    targets: [app]
    verify: {type: url_token, secrets_env: [HOOKRELAY_T_TOKEN]}
log: {level: debug}
`
	writeFile(t, cfg, text)

	p := startProc(t, env, "serve", "-config", cfg)
	admin := p.adminURL(t)
	body := `{"id":"j1","status":"completed"}`
	postJSON(t, p.url()+"/hooks/tok/"+secrets["HOOKRELAY_T_TOKEN"], body)
	postJSON(t, p.url()+"/hooks/tok/"+secrets["HOOKRELAY_T_TOKEN"]+"x", body)
	postJSON(t, p.url()+"/hooks/tok/"+secrets["HOOKRELAY_T_TOKEN"]+"/more", body)
	postJSON(t, p.url()+"/hooks/gh", body) // no signature: 401 with a logged reason
	postJSON(t, p.url()+"/hooks/fashn", `{"id":"j2","status":"completed"}`)
	waitUntil(t, "deliveries", func() bool { mu.Lock(); defer mu.Unlock(); return n >= 2 })
	out, code := relayCmd(t, []string{"HOOKRELAY_ADMIN_TOKEN=" + secrets["HOOKRELAY_T_ADMIN"]}, "dlq", "list", "-admin", admin)
	if code != 0 || !strings.Contains(out, ".app") {
		t.Fatalf("dlq list with the admin token (exit %d):\n%s", code, out)
	}
	if out, code := relayCmd(t, nil, "dlq", "list", "-admin", admin); code == 0 || !strings.Contains(out, "401") {
		t.Fatalf("dlq list without the token (exit %d):\n%s", code, out)
	}
	check, code := relayCmd(t, env, "check", "-config", cfg)
	if code != 0 {
		t.Fatalf("check (exit %d):\n%s", code, check)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-p.done
	logs := p.logs()
	if !strings.Contains(logs, `"status":401`) || !strings.Contains(logs, `"msg":"delivered"`) || !strings.Contains(logs, "dead-lettered") {
		t.Fatalf("the scenario did not run as planned:\n%s", logs)
	}
	for name, v := range secrets {
		for _, where := range []struct{ what, text string }{{"logs", logs}, {"relay check", check}} {
			if strings.Contains(where.text, v) || strings.Contains(where.text, v[len(v)-12:]) {
				t.Errorf("%s leaks %s", where.what, name)
			}
		}
	}
}

// The garbage collector runs at gcdefault.Percent unless the environment sets GOGC, as the runtime
// reports it in go_gc_gogc_percent.
func TestBinaryGOGC(t *testing.T) {
	t.Setenv("GOGC", "")
	os.Unsetenv("GOGC") // restored by t.Setenv at the end
	for _, tc := range []struct {
		env  []string
		want string
	}{{nil, "go_gc_gogc_percent 400\n"}, {[]string{"GOGC=150"}, "go_gc_gogc_percent 150\n"}} {
		dir := t.TempDir() // each its own store: a bbolt file has one owner
		tokenFile := filepath.Join(dir, "token")
		writeFile(t, tokenFile, "gogc-token-0123456789")
		p := startProc(t, tc.env, "serve", "-config", reloadConfig(t, dir, "http://127.0.0.1:9/", tokenFile, ""))
		resp, err := http.Get(p.adminURL(t) + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(body), tc.want) {
			t.Errorf("env %v: /metrics lacks %q", tc.env, tc.want)
		}
	}
}
