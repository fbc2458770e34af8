package redistest

import (
	"errors"
	"net"
	"os/exec"
	"testing"
)

func TestStartKillRestart(t *testing.T) {
	s := Start(t, Options{AOF: true})
	if err := ping(s.port); err != nil {
		t.Fatal(err)
	}
	s.Kill()
	if err := ping(s.port); err == nil {
		t.Fatal("still answering after Kill")
	}
	s.Restart()
	if err := ping(s.port); err != nil {
		t.Fatalf("not answering after Restart: %v", err)
	}
}

// A port held by another process is reported as taken (Start then picks another), never
// mistaken for a started server.
func TestStartOnTakenPort(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{t: t, dir: t.TempDir(), port: held.Addr().(*net.TCPAddr).Port}
	if err := s.start(bin); !errors.Is(err, errPortTaken) {
		s.Kill()
		t.Fatalf("start on a held port: %v, want errPortTaken", err)
	}
	// A redis-server of another test on the port does not pass for this one.
	other := Start(t, Options{})
	s = &Server{t: t, dir: t.TempDir(), port: other.port}
	if err := s.start(bin); !errors.Is(err, errPortTaken) {
		s.Kill()
		t.Fatalf("start on another redis-server's port: %v, want errPortTaken", err)
	}
}
