package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
)

// reloadConfig writes a config whose route takes a URL token from tokenFile and delivers to url.
func reloadConfig(t *testing.T, dir, url, tokenFile, extra string) string {
	t.Helper()
	path := filepath.Join(dir, "config.yaml")
	writeFile(t, path, fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: 127.0.0.1:0}
data_dir: %s
delivery: {poll_interval: 50ms, shutdown_grace: 2s}
targets:
  - name: app
    url: %s
    timeout: 5s
    retry: {initial: 10ms, max_backoff: 50ms}
routes:
  - name: fashn
    path: /hooks/fashn
    provider: fashn
    targets: [app]
    verify: {type: url_token, query: token, secrets_files: [%s]}
%s`, dir, url, tokenFile, extra))
	return path
}

// SIGHUP and `relay reload` swap the token and the target under load: no webhook is lost, no
// answer is a 5xx, an invalid file is refused with the old configuration kept, and a change that
// needs a restart is reported rather than half applied.
func TestBinaryReloadUnderLoad(t *testing.T) {
	oldTarget, newTarget := newJobTarget(t), newJobTarget(t)
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	const oldToken, newToken = "old-token-0123456789", "new-token-0123456789"
	writeFile(t, tokenFile, oldToken)
	cfgPath := reloadConfig(t, dir, oldTarget.srv.URL, tokenFile, "")
	p := startProc(t, nil, "serve", "-config", cfgPath)
	admin := p.adminURL(t)

	var (
		token   atomic.Value
		stop    atomic.Bool
		acked   sync.Map
		fails   atomic.Int64
		senders sync.WaitGroup
	)
	token.Store(oldToken)
	for w := range 6 {
		senders.Go(func() {
			for i := 0; !stop.Load(); i++ {
				id := "w" + strconv.Itoa(w) + "-" + strconv.Itoa(i)
				tok := token.Load().(string)
				resp, err := http.Post(p.url()+"/hooks/fashn?token="+tok, "application/json",
					strings.NewReader(`{"id":"`+id+`","status":"completed"}`))
				if err != nil {
					t.Errorf("job %s: %v", id, err)
					fails.Add(1)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				switch {
				case resp.StatusCode/100 == 2:
					acked.Store(id, true)
				case resp.StatusCode == http.StatusUnauthorized:
					// Either token may be refused in the instant the file and the reload race.
				default:
					t.Errorf("job %s: status %d", id, resp.StatusCode)
					fails.Add(1)
				}
			}
		})
	}
	ackedCount := func() int {
		n := 0
		acked.Range(func(_, _ any) bool { n++; return true })
		return n
	}
	waitUntil(t, "load before the reload", func() bool { return ackedCount() > 50 })

	// 1. SIGHUP: the token rotates and the target moves.
	writeFile(t, tokenFile, newToken)
	reloadConfig(t, dir, newTarget.srv.URL, tokenFile, "")
	token.Store(newToken)
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the SIGHUP reload", func() bool {
		return strings.Contains(p.logs(), `"msg":"configuration reloaded","changes":["targets changed: app"]`)
	})
	before := ackedCount()
	waitUntil(t, "load after the reload", func() bool { return ackedCount() > before+50 })

	// 2. An invalid file is refused, with its error, and the relay keeps serving the last good one.
	reloadConfig(t, dir, newTarget.srv.URL, tokenFile, "    ack_status: 201\n")
	out, code := relayCmd(t, nil, "reload", "-admin", admin)
	if code != 1 || !strings.Contains(out, "routes[0].ack_status") || !strings.Contains(out, "running configuration is kept") {
		t.Errorf("relay reload of an invalid file: exit %d\n%s", code, out)
	}
	// The log line is written before the answer, but reaches us through a pipe: wait for it.
	waitUntil(t, "the refused reload logged", func() bool {
		return strings.Contains(p.logs(), `"msg":"configuration reload refused; the running configuration is kept"`)
	})
	before = ackedCount()
	waitUntil(t, "load after the refused reload", func() bool { return ackedCount() > before+50 })

	// 3. `relay reload` of a file that also moves the listener and adds a route: the route applies,
	// the listener change is reported as not applied, and the command exits 1.
	cfg := reloadConfig(t, dir, newTarget.srv.URL, tokenFile, "")
	raw, _ := os.ReadFile(cfg)
	writeFile(t, cfg, strings.Replace(string(raw), "listen: 127.0.0.1:0\n", "listen: 127.0.0.1:1\n", 1)+
		"  - name: extra\n    path: /hooks/extra\n    provider: fashn\n    targets: [app]\n    insecure: true\n")
	out, code = relayCmd(t, nil, "reload", "-admin", admin)
	wantOut := "reloaded:\n  routes added: extra\n  NOT APPLIED, needs a restart: listen\n" +
		"relay: changes to listen were not applied: restart the relay to apply them\n"
	if code != 1 || out != wantOut {
		t.Errorf("relay reload: exit %d\n%s\nwant exit 1 and\n%s", code, out, wantOut)
	}
	waitUntil(t, "the reload logged", func() bool {
		return strings.Contains(p.logs(), `"msg":"configuration reloaded","changes":["routes added: extra","NOT APPLIED, needs a restart: listen"]`)
	})

	stop.Store(true)
	senders.Wait()
	if code, _ := postJSON(t, p.url()+"/hooks/fashn?token="+oldToken, `{"id":"late","status":"completed"}`); code != http.StatusUnauthorized {
		t.Errorf("retired token after the reloads: %d, want 401", code)
	}
	want := map[string]bool{}
	acked.Range(func(k, _ any) bool { want[k.(string)] = true; return true })
	if fails.Load() != 0 {
		t.Fatalf("%d requests failed or got a 5xx", fails.Load())
	}
	waitUntil(t, "every acknowledged webhook delivered", func() bool {
		o, n := oldTarget.snapshot(), newTarget.snapshot()
		for id := range want {
			if len(o[id])+len(n[id]) == 0 {
				return false
			}
		}
		return true
	})
	if newTarget.requests() == 0 {
		t.Error("nothing reached the new target")
	}
	resp, err := http.Get(admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, line := range []string{`hookrelay_config_reloads_total{result="ok"} 2`, `hookrelay_config_reloads_total{result="refused"} 1`} {
		if !strings.Contains(string(metrics), line) {
			t.Errorf("/metrics lacks %s", line)
		}
	}
	t.Logf("%d webhooks acknowledged across three reloads; %d requests to the old target, %d to the new",
		len(want), oldTarget.requests(), newTarget.requests())
}
