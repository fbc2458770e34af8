package main

import (
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// sink is the bench's target. It identifies each delivery by route, job ID and status, read from
// the body with the route's preset (as the relay reads it), so it works behind the relay and
// behind a plain proxy alike; behind the relay it also checks the X-Relay-* headers agree.
type sink struct {
	shapes map[string]*shape
	srv    *http.Server
	url    string

	mu   sync.Mutex
	seen map[string]int32 // dedupe key -> deliveries
	e2e  []time.Duration  // first delivery of each key, from its embedded send time

	requests   atomic.Int64
	unique     atomic.Int64
	duplicates atomic.Int64
	bad        atomic.Int64 // unreadable, unknown route, or headers that disagree with the body
	badMu      sync.Mutex
	firstBad   string

	held    atomic.Bool   // while true, answers wait for release
	release chan struct{} // closed to let held answers go
}

// startSink serves on ln, or when ln is nil on a new listener on addr.
func startSink(addr string, ln net.Listener, shapes []*shape, paused bool) (*sink, error) {
	s := &sink{shapes: map[string]*shape{}, seen: map[string]int32{}, release: make(chan struct{})}
	for _, sh := range shapes {
		s.shapes[sh.route] = sh
	}
	s.held.Store(paused)
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", addr); err != nil {
			return nil, err
		}
	}
	s.url = "http://" + ln.Addr().String()
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.srv.Serve(ln) }() // ends with close
	return s, nil
}

// resume lets held and future deliveries through.
func (s *sink) resume() {
	if s.held.CompareAndSwap(true, false) {
		close(s.release)
	}
}

func (s *sink) close() {
	s.resume()
	_ = s.srv.Close()
}

func (s *sink) fail(why string) {
	if s.bad.Add(1) == 1 {
		s.badMu.Lock()
		s.firstBad = why
		s.badMu.Unlock()
	}
}

func (s *sink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	body, err := io.ReadAll(r.Body)
	if err != nil {
		s.fail("reading a delivery: " + err.Error())
		return
	}
	s.requests.Add(1)
	route := r.Header.Get("X-Relay-Route")
	if route == "" { // through a plain proxy: /hooks/<route>[/token]
		route, _, _ = strings.Cut(strings.TrimPrefix(r.URL.Path, "/hooks/"), "/")
	}
	sh := s.shapes[route]
	if sh == nil {
		s.fail("delivery for unknown route " + route)
		w.WriteHeader(http.StatusNotFound)
		return
	}
	key, err := dedupeKey(sh, body)
	if err != nil {
		s.fail(err.Error())
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	if h := r.Header.Get("X-Relay-Job-Id"); h != "" && !strings.HasPrefix(key, route+"\x00"+h+"\x00") {
		s.fail("X-Relay-Job-Id " + h + " does not match the body")
	}
	sent, ok := sentAt(body)
	s.mu.Lock()
	n := s.seen[key]
	s.seen[key] = n + 1
	if n == 0 && ok {
		s.e2e = append(s.e2e, now.Sub(sent))
	}
	s.mu.Unlock()
	if n == 0 {
		s.unique.Add(1)
	} else {
		s.duplicates.Add(1)
	}
	if s.held.Load() {
		select {
		case <-s.release:
		case <-r.Context().Done():
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, `{"ok":true}`)
}

// delivered reports whether key reached the target.
func (s *sink) delivered(keys []string) (missing int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range keys {
		if s.seen[k] == 0 {
			missing++
		}
	}
	return missing
}

func (s *sink) latencies() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Duration(nil), s.e2e...)
}
