package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Fault drills against the real binary. By default each runs at a small scale, so that all of them
// fit in the normal suite; HOOKRELAY_DRILLS=full runs them at the scale docs/OPERATIONS.md names (the
// rate-limited burst alone then takes about 17 minutes):
//
//	HOOKRELAY_DRILLS=full go test -run Drill -v -timeout 60m ./cmd/relay/
func drillScale(small, full int) int {
	if os.Getenv("HOOKRELAY_DRILLS") == "full" {
		return full
	}
	return small
}

func drillDuration(small, full time.Duration) time.Duration {
	if os.Getenv("HOOKRELAY_DRILLS") == "full" {
		return full
	}
	return small
}

// drillTarget records every delivery attempt: per job, when each arrived; and how many were in
// flight at once. respond decides the answer; nil answers 200.
type drillTarget struct {
	srv      *httptest.Server
	mu       sync.Mutex
	attempts map[string][]time.Time // every request, by job
	ok       map[string]int         // 2xx-answered requests, by job
	all      []time.Time            // arrival of every 2xx-answered request
	inflight atomic.Int64
	maxIn    atomic.Int64
	respond  func(w http.ResponseWriter) bool // reports whether it answered 2xx
}

func newDrillTarget(t *testing.T, respond func(w http.ResponseWriter) bool) *drillTarget {
	dt := &drillTarget{attempts: map[string][]time.Time{}, ok: map[string]int{}, respond: respond}
	dt.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := dt.inflight.Add(1)
		defer dt.inflight.Add(-1)
		for m := dt.maxIn.Load(); n > m && !dt.maxIn.CompareAndSwap(m, n); m = dt.maxIn.Load() {
		}
		_, _ = io.Copy(io.Discard, r.Body)
		now := time.Now()
		ok := true
		if dt.respond != nil {
			ok = dt.respond(w)
		}
		dt.mu.Lock()
		job := r.Header.Get("X-Relay-Job-Id")
		dt.attempts[job] = append(dt.attempts[job], now)
		if ok {
			dt.all = append(dt.all, now)
			dt.ok[job]++
		}
		dt.mu.Unlock()
	}))
	t.Cleanup(dt.srv.Close)
	return dt
}

func (dt *drillTarget) snapshot() map[string][]time.Time {
	dt.mu.Lock()
	defer dt.mu.Unlock()
	out := make(map[string][]time.Time, len(dt.attempts))
	for k, v := range dt.attempts {
		out[k] = slices.Clone(v)
	}
	return out
}

// deliveredJobs counts the successful deliveries of each job.
func (dt *drillTarget) deliveredJobs() map[string]int {
	dt.mu.Lock()
	defer dt.mu.Unlock()
	out := make(map[string]int, len(dt.ok))
	for k, v := range dt.ok {
		out[k] = v
	}
	return out
}

func (dt *drillTarget) delivered() []time.Time {
	dt.mu.Lock()
	defer dt.mu.Unlock()
	return slices.Clone(dt.all)
}

// drillConfig writes an embedded-store config for the drills: one insecure fashn route to target
// app, with targetExtra indented under the target and extra appended at the top level.
func drillConfig(t *testing.T, dir, listen, targetURL, targetExtra, extra string) string {
	t.Helper()
	path := filepath.Join(dir, "config.yaml")
	writeFile(t, path, fmt.Sprintf(`listen: %s
admin: {listen: 127.0.0.1:0}
data_dir: %s
log: {level: info}
delivery: {poll_interval: 50ms, shutdown_grace: 2s}
%s
targets:
  - name: app
    url: %s
    timeout: 5s
%s
routes:
  - name: fashn
    path: /hooks/fashn
    provider: fashn
    targets: [app]
    max_body: 64KiB
    insecure: true
`, listen, dir, extra, targetURL, targetExtra))
	return path
}

// memory reads a process's memory in MiB: resident now and at its peak, and the anonymous part
// (heap and stacks; the rest of RSS is file pages, such as the bbolt file's mmap, which the kernel
// reclaims as it needs).
func memory(t *testing.T, pid int) (rss, hwm, anon float64) {
	t.Helper()
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(raw)) {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			rss = kb / 1024
		case "VmHWM:":
			hwm = kb / 1024
		case "RssAnon:":
			anon = kb / 1024
		}
	}
	return rss, hwm, anon
}

// watchAnon samples a process's anonymous memory every 100 ms until stop, which returns the peak.
func watchAnon(t *testing.T, pid int) (stop func() float64) {
	var peak float64
	done, quit := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
			if err == nil {
				for line := range strings.Lines(string(raw)) {
					if f := strings.Fields(line); len(f) >= 2 && f[0] == "RssAnon:" {
						kb, _ := strconv.ParseFloat(f[1], 64)
						peak = max(peak, kb/1024)
					}
				}
			}
			select {
			case <-quit:
				return
			case <-tick.C:
			}
		}
	}()
	return func() float64 { close(quit); <-done; return peak }
}

// sender posts jobs like a provider: until it gets a 2xx, retrying after errors and non-2xx.
type sender struct {
	url    func() string
	client *http.Client
	acked  sync.Map // job ID -> true
	n      atomic.Int64
	errs   atomic.Int64 // connection errors and non-2xx answers seen (and retried)
	fivexx atomic.Int64
	other  atomic.Int64 // answers neither 2xx nor 5xx
}

func newSender(url func() string) *sender {
	return &sender{url: url, client: &http.Client{Timeout: 10 * time.Second}}
}

func (s *sender) post(id string) {
	for try := 0; try < 2000; try++ {
		resp, err := s.client.Post(s.url()+"/hooks/fashn", "application/json",
			strings.NewReader(`{"id":"`+id+`","status":"completed","output":["https://cdn.example/`+id+`.png"]}`))
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode/100 == 2 {
				s.acked.Store(id, true)
				s.n.Add(1)
				return
			}
			if resp.StatusCode >= 500 {
				s.fivexx.Add(1)
			} else {
				s.other.Add(1)
			}
		}
		s.errs.Add(1)
		time.Sleep(20 * time.Millisecond)
	}
}

// run posts jobs prefix-0..n-1 from workers goroutines and waits.
func (s *sender) run(prefix string, n, workers int) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
				s.post(prefix + strconv.FormatInt(i, 10))
			}
		})
	}
	wg.Wait()
}

func (s *sender) ackedIDs() []string {
	var ids []string
	s.acked.Range(func(k, _ any) bool { ids = append(ids, k.(string)); return true })
	return ids
}

// waitDelivered waits until every acknowledged job reached the target at least once.
func waitDelivered(t *testing.T, dt *drillTarget, ids []string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		got := dt.deliveredJobs()
		missing := 0
		for _, id := range ids {
			if got[id] == 0 {
				missing++
			}
		}
		if missing == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d acknowledged webhooks never delivered", missing, len(ids))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Drill: kill -9 under load, restart on the same data (on a new port, which the senders switch to,
// as a load balancer would). Senders behave like providers and retry whatever was not
// acknowledged; every acknowledged webhook must reach the target.
func TestDrillKill9UnderLoad(t *testing.T) {
	n := drillScale(400, 20000)
	dt := newDrillTarget(t, nil)
	dir := t.TempDir()
	cfg := drillConfig(t, dir, "127.0.0.1:0", dt.srv.URL, "", "")
	p := startProc(t, nil, "serve", "-config", cfg)
	var url atomic.Pointer[string]
	u := p.url()
	url.Store(&u)
	s := newSender(func() string { return *url.Load() })
	done := make(chan struct{})
	go func() { s.run("k", n, 16); close(done) }()

	waitUntil(t, "load before the kill", func() bool { return s.n.Load() >= int64(n/3) })
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.done
	ackedAtKill := s.n.Load()
	p2 := startProc(t, nil, "serve", "-config", cfg)
	u2 := p2.url()
	url.Store(&u2)
	select {
	case <-done:
	case <-time.After(drillDuration(2*time.Minute, 30*time.Minute)):
		t.Fatalf("senders did not finish; %d acknowledged\n%s", s.n.Load(), p2.logs())
	}
	ids := s.ackedIDs()
	if len(ids) != n {
		t.Fatalf("%d of %d jobs acknowledged", len(ids), n)
	}
	waitDelivered(t, dt, ids, drillDuration(time.Minute, 10*time.Minute))
	dups := 0
	for _, k := range dt.deliveredJobs() {
		if k > 1 {
			dups++
		}
	}
	t.Logf("%d webhooks, %d acknowledged before the kill -9; all %d delivered after the restart; "+
		"%d jobs delivered twice (in flight at the kill, or their sender's retry crossed the restart); "+
		"%d sender retries", n, ackedAtKill, len(ids), dups, s.errs.Load())
}

// Drill: the target is down (503) for a while, then back. Everything is delivered, and retries
// keep coming no further apart than the configured backoff ceiling.
func TestDrillTargetDownThenBack(t *testing.T) {
	n := drillScale(40, 2000)
	downFor := drillDuration(2*time.Second, time.Minute)
	const maxBackoff = 400 * time.Millisecond
	var down atomic.Bool
	down.Store(true)
	dt := newDrillTarget(t, func(w http.ResponseWriter) bool {
		if down.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return false
		}
		return true
	})
	dir := t.TempDir()
	cfg := drillConfig(t, dir, "127.0.0.1:0", dt.srv.URL,
		"    retry: {initial: 50ms, multiplier: 2, max_backoff: 400ms, max_attempts: 10000, max_age: 1h}", "")
	p := startProc(t, nil, "serve", "-config", cfg)
	s := newSender(p.url)
	s.run("d", n, 8)
	time.Sleep(downFor)
	down.Store(false)
	recovered := time.Now()
	ids := s.ackedIDs()
	waitDelivered(t, dt, ids, drillDuration(30*time.Second, 5*time.Minute))
	drained := time.Since(recovered)

	// The ceiling plus the dispatcher's poll interval and scheduling slack on a loaded machine.
	const slack = 1500 * time.Millisecond
	worstGap, attempts := time.Duration(0), 0
	for id, at := range dt.snapshot() {
		attempts += len(at)
		if len(at) < 2 {
			t.Errorf("job %s: %d attempts; it should have been retried while the target was down", id, len(at))
		}
		for i := 1; i < len(at); i++ {
			worstGap = max(worstGap, at[i].Sub(at[i-1]))
		}
	}
	if worstGap > maxBackoff+slack {
		t.Errorf("retries %v apart: the backoff ceiling of %v was not kept", worstGap, maxBackoff)
	}
	t.Logf("%d webhooks, target down %v: %d attempts in all, longest gap between retries %v (ceiling %v), "+
		"all delivered %v after the target came back", n, downFor, attempts, worstGap, maxBackoff, drained.Round(time.Millisecond))
}

// Drill: a slow target. The concurrency cap holds at the target, and senders are acknowledged at
// once all the same: the backlog waits in the store.
func TestDrillSlowTarget(t *testing.T) {
	n := drillScale(90, 3000)
	delay := drillDuration(50*time.Millisecond, 500*time.Millisecond)
	const concurrency = 3
	dt := newDrillTarget(t, func(w http.ResponseWriter) bool { time.Sleep(delay); return true })
	dir := t.TempDir()
	cfg := drillConfig(t, dir, "127.0.0.1:0", dt.srv.URL, "    concurrency: 3", "")
	p := startProc(t, nil, "serve", "-config", cfg)
	s := newSender(p.url)
	start := time.Now()
	s.run("s", n, 10)
	ackedIn := time.Since(start)
	if s.errs.Load() != 0 {
		t.Errorf("%d posts were not acknowledged at the first try while the target was slow", s.errs.Load())
	}
	pendingAtAck := n - len(dt.delivered())
	ids := s.ackedIDs()
	waitDelivered(t, dt, ids, drillDuration(time.Minute, 30*time.Minute))
	if m := dt.maxIn.Load(); m > concurrency {
		t.Errorf("%d requests in flight at the target at once; the cap is %d", m, concurrency)
	} else if m < concurrency {
		t.Errorf("at most %d in flight: the cap of %d was never used", m, concurrency)
	}
	t.Logf("%d webhooks acknowledged in %v while the target took %v each (%d still to deliver then); "+
		"at most %d in flight at the target (cap %d)", n, ackedIn.Round(time.Millisecond), delay, pendingAtAck,
		dt.maxIn.Load(), concurrency)
}

// Drill: slowloris connections (headers or body dribbled a byte at a time) and oversized bodies.
// The slow connections are closed by the server's timeouts, oversized bodies get 413 without being
// read, real webhooks go through meanwhile, and memory stays flat.
func TestDrillSlowlorisAndOversized(t *testing.T) {
	slow := drillScale(200, 2000)
	big := drillScale(50, 1000)
	dt := newDrillTarget(t, nil)
	dir := t.TempDir()
	cfg := drillConfig(t, dir, "127.0.0.1:0", dt.srv.URL, "", "timeouts: {read_header: 1s, read: 2s}")
	p := startProc(t, nil, "serve", "-config", cfg)
	addr := strings.TrimPrefix(p.url(), "http://")
	s := newSender(p.url)
	s.run("warm", 20, 4)
	rssBefore, _, anonBefore := memory(t, p.cmd.Process.Pid)
	peakAnon := watchAnon(t, p.cmd.Process.Pid)

	// Slow senders: half dribble their headers, half their body.
	var conns []net.Conn
	for i := range slow {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		conns = append(conns, c)
		head := "POST /hooks/fashn HTTP/1.1\r\nHost: relay\r\n"
		if i%2 == 1 {
			head += "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
		}
		if _, err := c.Write([]byte(head)); err != nil {
			t.Fatal(err)
		}
	}
	stopDribble := make(chan struct{})
	var dribblers sync.WaitGroup
	for i, c := range conns {
		dribblers.Go(func() {
			tick := time.NewTicker(200 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-stopDribble:
					return
				case <-tick.C:
					b := "X-Slow: 1\r\n"
					if i%2 == 1 {
						b = " "
					}
					if _, err := c.Write([]byte(b)); err != nil {
						return // closed by the server: what we want
					}
				}
			}
		})
	}

	// Oversized bodies, announced and chunked, each sent in full by the client, from 50 clients
	// at a time (more, and the machine is too busy for a client to read its 413 before the
	// server's connection reset, which TCP lets discard it).
	const bigClients = 50
	var bigWG sync.WaitGroup
	var statuses sync.Map
	var nextBig atomic.Int64
	for range bigClients {
		bigWG.Go(func() {
			for i := int(nextBig.Add(1) - 1); i < big; i = int(nextBig.Add(1) - 1) {
				code, err := postOversized(addr, i%2 == 0)
				if err != nil {
					statuses.Store(i, err.Error())
					continue
				}
				statuses.Store(i, strconv.Itoa(code))
			}
		})
	}
	// Real webhooks during the attack.
	s.run("real", 50, 5)
	bigWG.Wait()
	statuses.Range(func(k, v any) bool {
		if v != "413" {
			t.Errorf("oversized body %v: %v, want 413", k, v)
		}
		return true
	})

	// Every slow connection is closed by the server within its timeouts (read: 2s).
	closed := 0
	for _, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := io.ReadAll(c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			continue
		}
		closed++
	}
	close(stopDribble)
	dribblers.Wait()
	for _, c := range conns {
		c.Close()
	}
	if closed != slow {
		t.Errorf("%d of %d slow connections were closed by the server", closed, slow)
	}
	ids := s.ackedIDs()
	if len(ids) != 70 || s.fivexx.Load() != 0 {
		t.Errorf("%d real webhooks acknowledged (want 70), %d 5xx", len(ids), s.fivexx.Load())
	}
	waitDelivered(t, dt, ids, 30*time.Second)
	rssAfter, hwm, _ := memory(t, p.cmd.Process.Pid)
	anonPeak := peakAnon()
	// Each open connection costs a goroutine and its buffers (about 25 KiB measured), whatever
	// it sends; what must not show is the bodies (1 MiB each, a gigabyte at full scale).
	if bound := 32 + 0.032*float64(slow+bigClients); anonPeak-anonBefore > bound {
		t.Errorf("anonymous memory peaked at %.1f MiB, %.1f MiB above the %.1f MiB before the attack (bound %.0f MiB)",
			anonPeak, anonPeak-anonBefore, anonBefore, bound)
	}
	t.Logf("%d slow connections all closed by the server, %d oversized bodies answered 413, %d real webhooks "+
		"delivered meanwhile; anonymous memory %.1f MiB before, peak %.1f MiB; RSS %.1f MiB before, %.1f MiB after, "+
		"peak %.1f MiB", slow, big, len(ids), anonBefore, anonPeak, rssBefore, rssAfter, hwm)
}

// postOversized sends a 1 MiB body to a route that takes 64 KiB, announced with Content-Length or
// chunked, and returns the status the relay answered. Writing goes on while the answer is read,
// as a real client's would; the relay may close before the client finished writing.
func postOversized(addr string, chunked bool) (int, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	const size = 1 << 20
	head := "POST /hooks/fashn HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
	if chunked {
		head += "Transfer-Encoding: chunked\r\n\r\n"
	} else {
		head += "Content-Length: " + strconv.Itoa(size) + "\r\n\r\n"
	}
	go func() {
		w := bufio.NewWriter(c)
		_, _ = w.WriteString(head)
		chunk := strings.Repeat("a", 32<<10)
		for sent := 0; sent < size; sent += len(chunk) {
			if chunked {
				_, _ = fmt.Fprintf(w, "%x\r\n%s\r\n", len(chunk), chunk)
			} else {
				_, _ = w.WriteString(chunk)
			}
			if w.Flush() != nil {
				return
			}
		}
	}()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(body), `"error"`) {
		return resp.StatusCode, fmt.Errorf("%d with a body that is not a JSON error: %q", resp.StatusCode, body)
	}
	return resp.StatusCode, nil
}

// Drill: a burst far above what the target may take (its rate limit). The store absorbs it: every
// webhook is acknowledged at once, memory stays flat, and the queue drains at the limit.
func TestDrillBurstToRateLimitedTarget(t *testing.T) {
	n := drillScale(300, 100000)
	rate := drillScale(200, 100)
	const burst = 10
	dt := newDrillTarget(t, nil)
	dir := t.TempDir()
	cfg := drillConfig(t, dir, "127.0.0.1:0", dt.srv.URL, fmt.Sprintf("    rate: %d\n    burst: %d", rate, burst), "")
	p := startProc(t, nil, "serve", "-config", cfg)
	rssIdle, _, anonIdle := memory(t, p.cmd.Process.Pid)
	peakAnon := watchAnon(t, p.cmd.Process.Pid)
	s := newSender(p.url)
	start := time.Now()
	s.run("b", n, 16)
	ackedIn := time.Since(start)
	rssAcked, hwmAcked, _ := memory(t, p.cmd.Process.Pid)
	ids := s.ackedIDs()
	if len(ids) != n || s.errs.Load() != 0 {
		t.Fatalf("%d of %d acknowledged, %d retries: the store should absorb the burst", len(ids), n, s.errs.Load())
	}
	waitDelivered(t, dt, ids, time.Duration(n/rate)*time.Second+drillDuration(time.Minute, 10*time.Minute))
	drained := time.Since(start)
	_, hwm, _ := memory(t, p.cmd.Process.Pid)
	anonPeak := peakAnon()

	times := dt.delivered()
	slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
	// In any one-second window: at most the rate plus the burst, and some slack: the limiter
	// grants tokens on time, but while the senders saturate the CPU, requests granted a few
	// milliseconds apart can reach the target bunched together.
	worst := 0
	for i, j := 0, 0; j < len(times); j++ {
		for times[j].Sub(times[i]) >= time.Second {
			i++
		}
		worst = max(worst, j-i+1)
	}
	if limit := rate + burst + rate/5; worst > limit {
		t.Errorf("%d deliveries within one second; the limit is %d/s with a burst of %d", worst, rate, burst)
	}
	// The drain cannot be faster than the limit allows.
	if floor := time.Duration(float64(n-burst) / float64(rate) * float64(time.Second) * 0.95); drained < floor {
		t.Errorf("drained %d in %v, faster than %d/s allows (%v)", n, drained, rate, floor)
	}
	if anonPeak-anonIdle > 64 {
		t.Errorf("anonymous memory peaked at %.1f MiB, %.1f MiB above idle: the backlog should wait in the store",
			anonPeak, anonPeak-anonIdle)
	}
	t.Logf("%d webhooks acknowledged in %v (%.0f/s) to a target limited to %d/s: busiest second %d deliveries; "+
		"drained in %v (%.1f/s); anonymous memory idle %.1f MiB, peak %.1f MiB; RSS idle %.1f MiB, after the burst "+
		"%.1f MiB (peak %.1f), peak overall %.1f MiB (the rest is the bbolt file's pages)",
		n, ackedIn.Round(time.Millisecond), float64(n)/ackedIn.Seconds(), rate, worst, drained.Round(time.Millisecond),
		float64(n)/drained.Seconds(), anonIdle, anonPeak, rssIdle, rssAcked, hwmAcked, hwm)
}
