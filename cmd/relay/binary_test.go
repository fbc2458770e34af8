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
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
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
	if out, err := cmd.CombinedOutput(); err != nil {
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
	addr   chan string
	done   chan error
}

func (p *proc) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

var listenRe = regexp.MustCompile(`"msg":"(?:relay|sink) listening","addr":"([^"]+)"|sink listening on http://(\S+)`)

// startProc runs the binary and waits for its listening line.
func startProc(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(relayBin, args...), addr: make(chan string, 1), done: make(chan error, 1)}
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
			line := sc.Text()
			p.mu.Lock()
			p.stderr.WriteString(line + "\n")
			p.mu.Unlock()
			if m := listenRe.FindStringSubmatch(line); m != nil {
				p.addr <- m[1] + m[2]
			}
		}
		p.done <- p.cmd.Wait()
	}()
	t.Cleanup(func() { _ = p.cmd.Process.Kill() })
	select {
	case a := <-p.addr:
		p.addr <- a
	case err := <-p.done:
		t.Fatalf("relay exited before listening: %v\n%s", err, p.logs())
	case <-time.After(20 * time.Second):
		t.Fatalf("relay did not start\n%s", p.logs())
	}
	return p
}

func (p *proc) url() string { a := <-p.addr; p.addr <- a; return "http://" + a }

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
