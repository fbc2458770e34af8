// Package redistest runs real redis-server processes for tests: one per test, on a free loopback
// port, so that a test can kill and restart it. A missing redis-server fails the test: the
// README's test command installs it, and a silent skip would hide the Redis suite in CI.
package redistest

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Server is one redis-server process.
type Server struct {
	Addr    string // 127.0.0.1:port
	t       testing.TB
	dir     string
	aof     bool
	port    int
	cmd     *exec.Cmd
	done    chan error
	stopped bool // Kill ran since the last start; tests drive a Server from one goroutine
}

// Options for Start.
type Options struct {
	// AOF turns on the append-only file with appendfsync always, so that a restart keeps every
	// write that was acknowledged.
	AOF bool
}

// Start runs a redis-server on a free port until the test ends.
func Start(t testing.TB, opt Options) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server not found: install it (apt-get install -y redis-server), as the README's test command does")
	}
	s := &Server{t: t, dir: t.TempDir(), aof: opt.AOF}
	var lastErr error
	for range 5 {
		s.port = freePort(t)
		if lastErr = s.start(bin); lastErr == nil {
			s.Addr = "127.0.0.1:" + strconv.Itoa(s.port)
			t.Cleanup(s.Kill)
			return s
		}
	}
	t.Fatalf("redis-server did not start: %v", lastErr)
	return nil
}

func freePort(t testing.TB) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func (s *Server) start(bin string) error {
	args := []string{"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1", "--save", "", "--dir", s.dir,
		"--logfile", filepath.Join(s.dir, "redis.log"), "--protected-mode", "no"}
	if s.aof {
		args = append(args, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		args = append(args, "--appendonly", "no")
	}
	s.cmd = exec.Command(bin, args...)
	if err := s.cmd.Start(); err != nil {
		return err
	}
	s.stopped = false
	s.done = make(chan error, 1)
	go func(cmd *exec.Cmd, done chan error) { done <- cmd.Wait() }(s.cmd, s.done)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-s.done:
			s.stopped = true
			log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
			return fmt.Errorf("exited: %v\n%s", err, tail(string(log)))
		default:
		}
		if ping(s.port) == nil {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.Kill()
	return fmt.Errorf("no PONG on port %d within 10s", s.port)
}

func ping(port int) error {
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") {
		return fmt.Errorf("answer %q", line)
	}
	return nil
}

// Kill stops the server at once (SIGKILL): what a crash looks like to clients.
func (s *Server) Kill() {
	if s.cmd == nil || s.stopped {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	s.stopped = true
}

// Restart kills the server and starts it again on the same port and directory, so that with AOF
// the data written before comes back.
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	bin, _ := exec.LookPath("redis-server")
	var err error
	for range 50 { // the port may linger briefly
		if err = s.start(bin); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("redis-server did not restart: %v", err)
}

func tail(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-10):], "\n")
}
