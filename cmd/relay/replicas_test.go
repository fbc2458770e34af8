package main

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hookrelay/hookrelay/relay/redistest"
)

// jobTarget is an httptest target that records deliveries by job ID and can hold them.
type jobTarget struct {
	srv      *httptest.Server
	mu       sync.Mutex
	attempts map[string][]int // job ID -> X-Relay-Attempt of each request
	hold     chan struct{}    // while open, requests wait (and then fail with 503)
	holding  atomic.Bool
}

func newJobTarget(t *testing.T) *jobTarget {
	jt := &jobTarget{attempts: map[string][]int{}, hold: make(chan struct{})}
	jt.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		attempt, _ := strconv.Atoi(r.Header.Get("X-Relay-Attempt"))
		jt.mu.Lock()
		jt.attempts[r.Header.Get("X-Relay-Job-Id")] = append(jt.attempts[r.Header.Get("X-Relay-Job-Id")], attempt)
		jt.mu.Unlock()
		if jt.holding.Load() {
			select {
			case <-jt.hold:
			case <-r.Context().Done():
			}
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(jt.srv.Close)
	return jt
}

func (jt *jobTarget) snapshot() map[string][]int {
	jt.mu.Lock()
	defer jt.mu.Unlock()
	out := make(map[string][]int, len(jt.attempts))
	for k, v := range jt.attempts {
		out[k] = append([]int(nil), v...)
	}
	return out
}

// delivered counts jobs whose last request was answered 200 (not held).
func (jt *jobTarget) requests() int {
	n := 0
	for _, a := range jt.snapshot() {
		n += len(a)
	}
	return n
}

func writeRedisConfig(t *testing.T, dir, redisAddr, targetURL, extra string) string {
	t.Helper()
	cfg := fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: 127.0.0.1:0}
log: {level: info}
store:
  type: redis
  redis:
    url: redis://%s/0
    prefix: replicas
delivery:
  lease: 3s
  poll_interval: 100ms
  shutdown_grace: 2s
targets:
  - name: app
    url: %s
    timeout: 2s
    concurrency: 4
    retry: {initial: 20ms, max_backoff: 100ms, max_attempts: 50}
routes:
  - name: fashn
    path: /hooks/fashn
    provider: fashn
    targets: [app]
    insecure: true
%s`, redisAddr, targetURL, extra)
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// A replica killed while it holds leases: the other delivers its deliveries once the leases expire.
func TestReplicaKilledOtherTakesOver(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	jt := newJobTarget(t)
	jt.holding.Store(true)
	cfg := writeRedisConfig(t, t.TempDir(), rs.Addr, jt.srv.URL, "")
	a := startProc(t, nil, "serve", "-config", cfg)
	const n = 12
	for i := range n {
		if status, _ := postJSON(t, a.url()+"/hooks/fashn", fmt.Sprintf(`{"id":"job-%d","status":"completed"}`, i)); status != http.StatusAccepted {
			t.Fatalf("post %d: %d", i, status)
		}
	}
	waitUntil(t, "replica a to hold deliveries in flight", func() bool { return jt.requests() == 4 }) // its concurrency
	held := jt.snapshot()
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-a.done
	jt.holding.Store(false)
	close(jt.hold)

	killedAt := time.Now()
	bproc := startProc(t, nil, "serve", "-config", cfg)
	defer func() {
		if t.Failed() {
			t.Log(bproc.logs())
		}
	}()
	waitUntil(t, "every job delivered by replica b", func() bool {
		got := jt.snapshot()
		if len(got) != n {
			return false
		}
		for job := range held {
			if len(got[job]) < 2 { // a's attempt, then b's after the lease
				return false
			}
		}
		return true
	})
	if since := time.Since(killedAt); since < 2*time.Second {
		t.Errorf("leased deliveries taken over after %v, before their 3 s lease could expire", since)
	}
	for job := range held {
		if a := jt.snapshot()[job]; a[len(a)-1] != 2 {
			t.Errorf("%s: attempts %v, want the takeover to be attempt 2", job, a)
		}
	}
}

// Redis killed mid-load and restarted with its AOF: every webhook answered 2xx is delivered, and
// every other answer was a 503.
func TestRedisRestartMidLoad(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{AOF: true})
	jt := newJobTarget(t)
	cfg := writeRedisConfig(t, t.TempDir(), rs.Addr, jt.srv.URL, "")
	p := startProc(t, nil, "serve", "-config", cfg)

	var mu sync.Mutex
	acked := map[string]bool{}
	statuses := map[int]int{}
	answered := map[int64]bool{} // job number -> answered (or failed)
	var seq atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 20 * time.Second}
	for range 8 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				n := seq.Add(1)
				job := fmt.Sprintf("job-%d", n)
				resp, err := client.Post(p.url()+"/hooks/fashn", "application/json", strings.NewReader(`{"id":"`+job+`","status":"completed"}`))
				if err != nil {
					t.Error(err)
					mu.Lock()
					answered[n] = true
					mu.Unlock()
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				mu.Lock()
				answered[n] = true
				statuses[resp.StatusCode]++
				if resp.StatusCode == http.StatusAccepted {
					acked[job] = true
				}
				mu.Unlock()
			}
		})
	}
	answeredWith := func(status, n int) func() bool {
		return func() bool { mu.Lock(); defer mu.Unlock(); return statuses[status] >= n }
	}
	waitUntil(t, "webhooks stored before the outage", answeredWith(http.StatusAccepted, 20))
	rs.Kill()
	// Down until a webhook is refused (after go-redis' own retries, about a second) and every
	// webhook sent before the kill is answered: a store write in flight at the kill may have been
	// done with its reply lost, and a retry of it on the restarted Redis would find its own dedupe
	// key. Webhooks sent later cannot have reached the killed server.
	killSeq := seq.Load()
	waitUntil(t, "a 503 while Redis is down", answeredWith(http.StatusServiceUnavailable, 1))
	waitUntil(t, "every webhook sent before the kill answered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for n := int64(1); n <= killSeq; n++ {
			if !answered[n] {
				return false
			}
		}
		return true
	})
	rs.Restart()
	mu.Lock()
	before := statuses[http.StatusAccepted]
	mu.Unlock()
	waitUntil(t, "webhooks stored after the restart", answeredWith(http.StatusAccepted, before+20))
	close(stop)
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	t.Logf("answers: %v", statuses)
	if statuses[http.StatusServiceUnavailable] == 0 || statuses[http.StatusAccepted] == 0 {
		t.Fatalf("answers %v: want both 202s and 503s (the outage was not seen)", statuses)
	}
	for status := range statuses {
		if status != http.StatusAccepted && status != http.StatusServiceUnavailable {
			t.Errorf("answer %d: every webhook must be either stored (202) or refused (503)", status)
		}
	}
	waitUntil(t, "every acknowledged webhook delivered", func() bool {
		got := jt.snapshot()
		for job := range acked {
			if len(got[job]) == 0 {
				return false
			}
		}
		return true
	})
}
