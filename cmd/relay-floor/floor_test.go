package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// TestFloorStoresBeforeItAnswersAndDeliversOnce: the reference must do what it claims to measure,
// on both listeners: a 202 only once the body is in the log, each job delivered once, the same
// bytes that were sent, duplicates and bad bodies answered without a delivery. The target holds its
// answers until every webhook is sent, so queued deliveries outlive their requests' buffers.
func TestFloorStoresBeforeItAnswersAndDeliversOnce(t *testing.T) {
	for _, server := range []string{"nethttp", "fasthttp"} {
		t.Run(server, func(t *testing.T) {
			var mu sync.Mutex
			got := map[string][]string{}
			release := make(chan struct{})
			sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				<-release
				var m struct{ ID string }
				var buf bytes.Buffer
				_, _ = buf.ReadFrom(r.Body)
				_ = json.Unmarshal(buf.Bytes(), &m)
				mu.Lock()
				got[m.ID] = append(got[m.ID], buf.String())
				mu.Unlock()
			}))
			defer sink.Close()
			logPath := filepath.Join(t.TempDir(), "floor.log")
			f, err := newFloor(logPath, true, sink.URL+"/hook", 8, nil, 1<<10) // small, so the log grows during the test
			if err != nil {
				t.Fatal(err)
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			if server == "fasthttp" {
				go func() { _ = fasthttp.Serve(ln, f.serveFast) }()
			} else {
				go func() { _ = http.Serve(ln, f) }()
			}
			url := "http://" + ln.Addr().String() + "/hooks/x"
			post := func(body string) int {
				t.Helper()
				resp, err := http.Post(url, "application/json", bytes.NewBufferString(body))
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				return resp.StatusCode
			}
			const n = 40
			body := func(i int) string { return fmt.Sprintf(`{"id":"job-%d","status":"completed"}`, i) }
			for i := range n {
				if code := post(body(i)); code != http.StatusAccepted {
					t.Fatalf("job-%d: status %d, want 202", i, code)
				}
				// Answered 202: the body is already in the log.
				if log, _ := os.ReadFile(logPath); !bytes.Contains(log, []byte("M "+body(i)+"\n")) {
					t.Fatalf("job-%d answered 202 before it was in the log", i)
				}
			}
			for _, tc := range []struct {
				body string
				want int
			}{{body(3), http.StatusOK}, {`{"status":"x"}`, http.StatusBadRequest}, {`not json`, http.StatusBadRequest}} {
				if code := post(tc.body); code != tc.want {
					t.Errorf("%s: status %d, want %d", tc.body, code, tc.want)
				}
			}
			close(release)
			deadline := time.Now().Add(10 * time.Second)
			for {
				mu.Lock()
				k := len(got)
				mu.Unlock()
				if k == n || time.Now().After(deadline) {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			mu.Lock()
			defer mu.Unlock()
			for i := range n {
				id := fmt.Sprintf("job-%d", i)
				if len(got[id]) != 1 || got[id][0] != body(i) {
					t.Errorf("%s delivered %q, want it once as sent", id, got[id])
				}
			}
			if len(got) != n {
				t.Errorf("delivered %d jobs, want %d: %v", len(got), n, got)
			}
		})
	}
}
