// Package redistest runs real redis-server processes for tests: one per test, on a loopback port
// of its own, so that a test can kill and restart it; and from the same binary a Cluster, a
// replica, and a Sentinel set-up (topology.go). redis-server cannot bind port 0 and say
// which port it got, so Start picks a port and, when redis-server reports it taken, picks another
// (relay/portpick); a server counts as up only when the process answering on the port is the
// one started. A missing redis-server fails the test: the README's test command installs it, and
// a silent skip would hide the Redis suite in CI.
package redistest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hookrelay/hookrelay/relay/portpick"
)

// Server is one redis-server process.
type Server struct {
	Addr    string // 127.0.0.1:port
	t       testing.TB
	dir     string
	aof     bool
	lead    []string // arguments before the usual ones (a Sentinel's config file and --sentinel)
	extra   []string // and after them
	port    int
	cmd     *exec.Cmd
	done    chan error
	stopped bool // Kill ran since the last start; tests drive a Server from one goroutine
	paused  bool // Pause ran since the last Resume
}

// Options for Start.
type Options struct {
	// AOF turns on the append-only file with appendfsync always, so that a restart keeps every
	// write that was acknowledged.
	AOF bool
}

// errPortTaken is redis-server failing to bind its port: another process holds it.
var errPortTaken = errors.New("port taken")

// Start runs a redis-server until the test ends.
func Start(t testing.TB, opt Options) *Server {
	t.Helper()
	return start(t, &Server{t: t, dir: t.TempDir(), aof: opt.AOF}, nil)
}

// start runs s on a port of its own; config, when set, writes a config file naming the port
// first (a Sentinel's: it has no flag for it).
func start(t testing.TB, s *Server, config func(port int) string) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server not found: install it (apt-get install -y redis-server), as the README's test command does")
	}
	for attempt := 1; ; attempt++ {
		s.port = portpick.Pick()
		if config != nil {
			path := filepath.Join(s.dir, "server.conf")
			if err := os.WriteFile(path, []byte(config(s.port)), 0o600); err != nil {
				t.Fatal(err)
			}
			s.lead = []string{path, "--sentinel"}
		}
		err := s.start(bin)
		if err == nil {
			s.Addr = "127.0.0.1:" + strconv.Itoa(s.port)
			t.Cleanup(s.Kill)
			return s
		}
		if !errors.Is(err, errPortTaken) || attempt == portpick.Attempts {
			t.Fatalf("redis-server did not start: %v", err)
		}
	}
}

func (s *Server) start(bin string) error {
	args := append(slices.Clone(s.lead), "--port", strconv.Itoa(s.port), "--bind", "127.0.0.1", "--save", "", "--dir", s.dir,
		"--logfile", filepath.Join(s.dir, "redis.log"), "--protected-mode", "no",
		"--repl-diskless-sync-delay", "0") // a replica syncs at once, not after 5 s
	if s.aof {
		args = append(args, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		args = append(args, "--appendonly", "no")
	}
	s.cmd = exec.Command(bin, append(args, s.extra...)...)
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
			if strings.Contains(string(log), "Address already in use") {
				return fmt.Errorf("port %d: %w", s.port, errPortTaken)
			}
			return fmt.Errorf("exited: %v\n%s", err, tail(string(log)))
		default:
		}
		// Another redis-server may answer on the port (it took it first, and ours is about to
		// report the bind failure): only ours counts, and only once it has loaded its data (INFO
		// answers while loading, PING does not).
		if pid, err := processID(s.port); err == nil && pid == s.cmd.Process.Pid && ping(s.port) == nil {
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

// processID asks the server on port for its process ID (INFO server).
func processID(port int) (int, error) {
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("INFO server\r\n")); err != nil {
		return 0, err
	}
	r := bufio.NewReader(c)
	head, err := r.ReadString('\n')
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(head, "$")))
	if !strings.HasPrefix(head, "$") || err != nil {
		return 0, fmt.Errorf("answer %q", head)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(body)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "process_id:"); ok {
			return strconv.Atoi(v)
		}
	}
	return 0, errors.New("INFO server has no process_id")
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

// Restart kills the server and starts it again on the same port (its clients know the address)
// and directory, so that with AOF the data written before comes back. The port is outside the
// ephemeral range, so nothing but an explicit bind can take it in between.
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	bin, _ := exec.LookPath("redis-server")
	if err := s.start(bin); err != nil {
		s.t.Fatalf("redis-server did not restart: %v", err)
	}
}

func tail(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-10):], "\n")
}
