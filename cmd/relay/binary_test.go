package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hookrelay/hookrelay/cmd/internal/buildlock"
	"github.com/hookrelay/hookrelay/relay"
)

// These tests run the real binary, built once for the package.
var relayBin string

// dockerVersion is the VERSION build argument TestMain passes to the Dockerfile's build command.
const dockerVersion = "docker-build-test"

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "relay-bin")
	if err != nil {
		panic(err)
	}
	relayBin = filepath.Join(dir, "relay")
	// Build exactly as the Dockerfile does: its RUN line, with the output moved here.
	build, err := dockerfileBuild("../../Dockerfile", relayBin)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cmd := exec.Command("sh", "-c", build)
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "VERSION="+dockerVersion)
	release, err := buildlock.Hold() // relay-bench's tests build the same packages
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	out, err := cmd.CombinedOutput()
	release()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building relay with the Dockerfile's command %q: %v\n%s", build, err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// dockerfileBuild returns the Dockerfile's `go build` command with its output path replaced by out.
func dockerfileBuild(dockerfile, out string) (string, error) {
	raw, err := os.ReadFile(dockerfile)
	if err != nil {
		return "", err
	}
	for line := range strings.Lines(string(raw)) {
		cmd, ok := strings.CutPrefix(strings.TrimSpace(line), "RUN ")
		if !ok || !strings.Contains(cmd, "go build") {
			continue
		}
		if !strings.Contains(cmd, "-o /out/relay ") {
			return "", fmt.Errorf("Dockerfile: the go build line %q no longer writes -o /out/relay", cmd)
		}
		return strings.Replace(cmd, "-o /out/relay ", "-o "+out+" ", 1), nil
	}
	return "", errors.New("Dockerfile: no RUN line with go build")
}

// proc is a running relay process with its stderr collected.
type proc struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	stderr bytes.Buffer
	bound  boundAddrs // what relay serve wrote to its ready file; for sink, Listen from its log
	done   chan error

	readyFile string
}

func (p *proc) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

var sinkListenRe = regexp.MustCompile(`sink listening on http://(\S+)`)

// startProc runs the binary and waits until it serves: relay serve gets a -ready-file and is
// waited for until it writes it (its config binds port 0, so the addresses come from there); the
// sink is waited for until it logs its address.
func startProc(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	serve := len(args) > 0 && args[0] == "serve"
	var readyFile string
	if i := slices.Index(args, "-ready-file"); i >= 0 {
		readyFile = args[i+1]
	} else if serve {
		readyFile = filepath.Join(t.TempDir(), "ready.json")
		args = append(args, "-ready-file", readyFile)
	}
	p := &proc{cmd: exec.Command(relayBin, args...), done: make(chan error, 1), readyFile: readyFile}
	p.cmd.Env = append(os.Environ(), env...)
	pipe, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stdout = &lockedWriter{mu: &p.mu, w: &p.stderr}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			p.mu.Lock()
			p.stderr.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
		}
		p.done <- p.cmd.Wait()
	}()
	t.Cleanup(func() { _ = p.cmd.Process.Kill() })
	deadline := time.Now().Add(30 * time.Second)
	for {
		if serve {
			if b, err := os.ReadFile(readyFile); err == nil && !bytes.Contains(b, []byte(staleReady)) {
				if err := json.Unmarshal(b, &p.bound); err != nil {
					t.Fatalf("ready file %s: %v\n%s", readyFile, err, b)
				}
				return p
			}
		} else if m := sinkListenRe.FindStringSubmatch(p.logs()); m != nil {
			p.bound.Listen = m[1]
			return p
		}
		select {
		case err := <-p.done:
			p.done <- err
			t.Fatalf("%s exited before serving: %v\n%s", args[0], err, p.logs())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not start within 30s\n%s", args[0], p.logs())
		}
	}
}

// staleReady marks a ready file left by an earlier run (TestBinaryReadyFile).
const staleReady = "stale-ready-file"

func (p *proc) url() string { return "http://" + p.bound.Listen }

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

func writeConfig(t *testing.T, dir, targetURL, extraTarget string) string {
	t.Helper()
	cfg := fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: 127.0.0.1:0}
data_dir: %s
delivery:
  poll_interval: 50ms
  shutdown_grace: 2s
targets:
  - name: app
    url: %s
    timeout: 5s
%s    retry:
      initial: 10ms
      max_backoff: 50ms
routes:
  - name: fashn
    path: /hooks/fashn
    provider: fashn
    targets: [app]
    insecure: true
`, dir, targetURL, extraTarget)
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func postJSON(t *testing.T, url, body string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, m
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A relay killed with SIGKILL while a delivery is in flight delivers it again after a restart,
// and every webhook it acknowledged before dying is delivered.
func TestBinaryKill9RedeliversAfterRestart(t *testing.T) {
	var mu sync.Mutex
	var attempts []string
	block := make(chan struct{})
	var blocking = true
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		attempts = append(attempts, r.Header.Get("X-Relay-Job-Id")+"#"+r.Header.Get("X-Relay-Attempt")+" "+string(body))
		b := blocking
		mu.Unlock()
		if b {
			select {
			case <-block:
			case <-r.Context().Done():
			}
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer target.Close()
	defer close(block)
	dir := t.TempDir()
	cfg := writeConfig(t, dir, target.URL, "    concurrency: 1\n")

	p := startProc(t, nil, "serve", "-config", cfg)
	const n = 20
	for i := range n {
		status, _ := postJSON(t, p.url()+"/hooks/fashn", fmt.Sprintf(`{"id":"job-%d","status":"completed"}`, i))
		if status != http.StatusAccepted {
			t.Fatalf("webhook %d: %d", i, status)
		}
	}
	waitUntil(t, "a delivery in flight", func() bool { mu.Lock(); defer mu.Unlock(); return len(attempts) == 1 })
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.done

	mu.Lock()
	blocking = false
	mu.Unlock()
	p2 := startProc(t, nil, "serve", "-config", cfg)
	jobs := map[string]bool{}
	waitUntil(t, "all acknowledged webhooks delivered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, a := range attempts[1:] {
			jobs[strings.SplitN(a, "#", 2)[0]] = true
		}
		return len(jobs) == n
	})
	mu.Lock()
	first := strings.SplitN(attempts[0], " ", 2)[0]
	again := false
	for _, a := range attempts[1:] {
		if strings.HasPrefix(a, strings.SplitN(first, "#", 2)[0]+"#2 ") {
			again = true
		}
	}
	mu.Unlock()
	if !again {
		t.Errorf("the delivery in flight at the kill (%s) was not redelivered as attempt 2:\n%v", first, attempts)
	}
	if err := p2.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := <-p2.done; err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, p2.logs())
	}
	if !strings.Contains(p2.logs(), "relay stopped") {
		t.Errorf("no clean stop in the logs:\n%s", p2.logs())
	}
}

// relay serve on port 0 writes the addresses it bound to its ready file (replacing an earlier
// run's), the same as it logs, only once it serves, and removes the file at a clean stop.
func TestBinaryReadyFile(t *testing.T) {
	jt := newJobTarget(t)
	for _, tc := range []struct {
		name      string
		admin     string
		wantAdmin bool
	}{
		{"admin on", "", true},
		{"admin off", "admin: {listen: 'off'}\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := writeConfig(t, dir, jt.srv.URL, "")
			if tc.admin != "" {
				writeFile(t, cfg, strings.Replace(mustRead(t, cfg), "admin: {listen: 127.0.0.1:0}\n", tc.admin, 1))
			}
			ready := filepath.Join(dir, "run", "ready.json")
			if err := os.MkdirAll(filepath.Dir(ready), 0o700); err != nil {
				t.Fatal(err)
			}
			writeFile(t, ready, `{"listen":"`+staleReady+`"}`)
			p := startProc(t, nil, "serve", "-config", cfg, "-ready-file", ready)
			// Logged after the rename.
			waitUntil(t, "the ready file's log line", func() bool {
				return strings.Contains(p.logs(), `"msg":"ready file written","path":"`+ready+`"`)
			})
			logs := p.logs()
			if want := `"msg":"relay listening","addr":"` + p.bound.Listen + `"`; !strings.Contains(logs, want) {
				t.Errorf("the log lacks %s:\n%s", want, logs)
			}
			if strings.HasSuffix(p.bound.Listen, ":0") || p.bound.HTTPListen != "" {
				t.Errorf("ready file: %+v", p.bound)
			}
			if got := p.bound.Admin != ""; got != tc.wantAdmin {
				t.Errorf("ready file admin %q, want an address: %v", p.bound.Admin, tc.wantAdmin)
			} else if got && !strings.Contains(logs, `"msg":"admin listening","addr":"`+p.bound.Admin+`"`) {
				t.Errorf("the log lacks the admin address %s:\n%s", p.bound.Admin, logs)
			}
			if entries, _ := os.ReadDir(filepath.Dir(ready)); len(entries) != 1 {
				t.Errorf("beside the ready file: %v (a temporary file left?)", entries)
			}
			if status, _ := postJSON(t, p.url()+"/hooks/fashn", `{"id":"ready-`+tc.name+`","status":"completed"}`); status != http.StatusAccepted {
				t.Fatalf("webhook to the ready file's address: %d", status)
			}
			if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if err := <-p.done; err != nil {
				t.Fatalf("exit after SIGTERM: %v\n%s", err, p.logs())
			}
			if _, err := os.Stat(ready); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the ready file outlived a clean stop: %v", err)
			}
		})
	}
}

// relay check prints the effective config; the signing secret itself appears nowhere.
func TestBinaryCheckRedactsSecrets(t *testing.T) {
	const secret = "whsec_c3VwZXItc2VjcmV0LXZhbHVlLTEyMzQ1Ng=="
	dir := t.TempDir()
	cfg := writeConfig(t, dir, "http://127.0.0.1:9/x", "    signing_secret_env: HOOKRELAY_SECRET\n")
	out, err := exec.Command(relayBin, "check", "-config", cfg).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "targets[0].signing_secret_env: environment variable HOOKRELAY_SECRET is not set") {
		t.Fatalf("check without the env var: %v\n%s", err, out)
	}
	cmd := exec.Command(relayBin, "check", "-config", cfg)
	cmd.Env = append(os.Environ(), "HOOKRELAY_SECRET="+secret)
	out, err = cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("check: %v\n%s", err, out)
	}
	for _, want := range []string{"is valid", "max_attempts: 20", "dedupe_ttl: 72h0m0s", "signing_secret_env: HOOKRELAY_SECRET", "signing secret found"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("check output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(string(out), secret) || strings.Contains(string(out), "c3VwZXItc2VjcmV0") || strings.Contains(string(out), "super-secret") {
		t.Fatalf("check output leaks the secret:\n%s", out)
	}
}

// The quick start: relay -> sink, with the sink verifying the relay's signature.
func TestBinarySinkVerifiesRelaySignature(t *testing.T) {
	env := []string{"HOOKRELAY_SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}
	sink := startProc(t, env, "sink", "-listen", "127.0.0.1:0", "-secret-env", "HOOKRELAY_SECRET")
	dir := t.TempDir()
	cfg := writeConfig(t, dir, sink.url()+"/webhooks", "    signing_secret_env: HOOKRELAY_SECRET\n")
	p := startProc(t, env, "serve", "-config", cfg)
	if status, _ := postJSON(t, p.url()+"/hooks/fashn", `{"id":"j1","status":"completed"}`); status != http.StatusAccepted {
		t.Fatalf("status %d", status)
	}
	waitUntil(t, "the sink to print the delivery", func() bool { return strings.Contains(sink.logs(), `{"id":"j1","status":"completed"}`) })
	if !strings.Contains(sink.logs(), "signature ok") || !strings.Contains(sink.logs(), "X-Relay-Job-Status: succeeded") {
		t.Fatalf("sink output:\n%s", sink.logs())
	}

	// A request that is not from the relay is refused.
	resp, err := http.Post(sink.url()+"/webhooks", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("unsigned request to the sink: %d, want 401", resp.StatusCode)
	}
	// A replayed one, signed with the right key an hour ago, is refused by the replay window the
	// standard_webhooks verifier applies.
	key, err := relay.ParseSigningSecret(strings.TrimPrefix(env[0], "HOOKRELAY_SECRET="))
	if err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour).Unix()
	req, _ := http.NewRequest(http.MethodPost, sink.url()+"/webhooks", strings.NewReader(`{"replayed":1}`))
	req.Header = http.Header{"Webhook-Id": {"d1"}, "Webhook-Timestamp": {fmt.Sprint(old)},
		"Webhook-Signature": {relay.SignStandardWebhook(key, "d1", old, []byte(`{"replayed":1}`))}}
	if resp, err = http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	waitUntil(t, "the sink to print the replay", func() bool { return strings.Contains(sink.logs(), `{"replayed":1}`) })
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(sink.logs(), "webhook-timestamp "+fmt.Sprint(old)+" is 1h0m") {
		t.Fatalf("replayed request to the sink: %d, want 401 naming its age:\n%s", resp.StatusCode, sink.logs())
	}
}

func TestBinaryUsageAndVersion(t *testing.T) {
	out, err := exec.Command(relayBin, "frobnicate").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), `unknown command "frobnicate"`) {
		t.Fatalf("unknown command: %v %q", err, out)
	}
	out, err = exec.Command(relayBin, "serve", "-config", "/nonexistent.yaml").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "/nonexistent.yaml") {
		t.Fatalf("missing config: %v %q", err, out)
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}
