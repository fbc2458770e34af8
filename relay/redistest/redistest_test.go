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

// A cluster of three primaries with a replica each; a killed primary's replica takes over.
func TestClusterFailover(t *testing.T) {
	t.Parallel() // mostly waiting for the servers
	c := StartCluster(t, ClusterOptions{Primaries: 3, Replicas: 1})
	primaries := c.Primaries()
	if len(primaries) != 3 || len(c.Nodes) != 6 {
		t.Fatalf("%d primaries of %d nodes, want 3 of 6", len(primaries), len(c.Nodes))
	}
	owner := c.SlotOwner(0)
	owner.Kill()
	WaitFor(t, "a replica to take over slot 0", func() bool { return len(c.Primaries()) == 3 })
	c.WaitHealthy()
	if now := c.SlotOwner(0); now == owner || !now.Alive() {
		t.Fatalf("slot 0 still on %s after its primary was killed", now.Addr)
	}
}

// One primary, two replicas, three sentinels; a killed primary is replaced by a replica, which
// the other replica follows.
func TestSentinelFailover(t *testing.T) {
	t.Parallel()
	s := StartSentinel(t, SentinelOptions{Replicas: 2, Sentinels: 3})
	old := s.Primary()
	if old != s.Servers[0] {
		t.Fatalf("the sentinels name %s, want the first server %s", old.Addr, s.Servers[0].Addr)
	}
	old.Kill()
	now := s.WaitFailover(old)
	if now == old || now.role() != "master" {
		t.Fatalf("after the failover the primary is %s (role %q)", now.Addr, now.role())
	}
}
