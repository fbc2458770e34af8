package redistest

import (
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Topologies for the scale-out tests: a Redis Cluster and a Sentinel set-up, from the same
// redis-server binary. Every wait is for a state the servers report (CLUSTER INFO, ROLE,
// SENTINEL replies), bounded by topologyTimeout, never a fixed sleep.

// topologyTimeout bounds each wait for a topology to settle (a failover takes a few seconds).
const topologyTimeout = 60 * time.Second

// Do sends one command to the server and returns its reply.
func (s *Server) Do(args ...any) (any, error) {
	c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: 5 * time.Second})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c.Do(ctx, args...).Result()
}

// Alive reports whether the server answers: started, and neither killed nor paused since.
func (s *Server) Alive() bool { return s.cmd != nil && !s.stopped && !s.paused }

// Pause stops the process (SIGSTOP) until Resume: a replica that then confirms nothing.
func (s *Server) Pause() { s.signal("-STOP"); s.paused = true }

// Resume continues a paused process.
func (s *Server) Resume() { s.signal("-CONT"); s.paused = false }

func (s *Server) signal(sig string) {
	s.t.Helper()
	if err := exec.Command("kill", sig, strconv.Itoa(s.cmd.Process.Pid)).Run(); err != nil {
		s.t.Fatalf("kill %s %d: %v", sig, s.cmd.Process.Pid, err)
	}
}

// role is the first element of ROLE: master, slave or sentinel; "" when the server does not
// answer.
func (s *Server) role() string {
	r, err := s.Do("role")
	if l, ok := r.([]any); err == nil && ok && len(l) > 0 {
		v, _ := l[0].(string)
		return v
	}
	return ""
}

// Info returns one field of INFO ("" when the server does not answer).
func (s *Server) Info(section, field string) string {
	r, err := s.Do("info", section)
	if err != nil {
		return ""
	}
	text, _ := r.(string)
	for line := range strings.Lines(text) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			return v
		}
	}
	return ""
}

// WaitFor polls cond every 20 ms until it holds, failing the test after topologyTimeout.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(topologyTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("redistest: timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Cluster is a Redis Cluster of Primaries primaries with Replicas replicas each.
type Cluster struct {
	Nodes []*Server
	t     testing.TB
}

// ClusterOptions shape a Cluster.
type ClusterOptions struct {
	Primaries int // at least 3, as redis-cli --cluster create requires
	Replicas  int // per primary
}

// StartCluster starts the nodes, joins them with redis-cli --cluster create and waits until
// every node reports the cluster ok and every replica is in sync.
func StartCluster(t testing.TB, opt ClusterOptions) *Cluster {
	t.Helper()
	if _, err := exec.LookPath("redis-cli"); err != nil {
		t.Fatal("redis-cli not found: it comes with redis-server (apt-get install -y redis-server)")
	}
	c := &Cluster{t: t}
	// A node timeout of a second makes failovers quick; replicas may take over however far
	// behind, since the tests kill primaries under load.
	extra := []string{"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "1000",
		"--cluster-replica-validity-factor", "0"}
	for range opt.Primaries * (1 + opt.Replicas) {
		c.Nodes = append(c.Nodes, start(t, &Server{t: t, dir: t.TempDir(), extra: extra}, nil))
	}
	args := []string{"--cluster", "create"}
	args = append(args, c.Addrs()...)
	args = append(args, "--cluster-replicas", strconv.Itoa(opt.Replicas), "--cluster-yes")
	if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	c.WaitHealthy()
	return c
}

// Addrs are every node's address.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		out[i] = n.Addr
	}
	return out
}

// Primaries are the live nodes that are primaries now.
func (c *Cluster) Primaries() []*Server {
	var out []*Server
	for _, n := range c.Nodes {
		if n.Alive() && n.role() == "master" {
			out = append(out, n)
		}
	}
	return out
}

// WaitHealthy waits until every live node reports cluster_state:ok with all 16384 slots served,
// and every live replica has its link to its primary up.
func (c *Cluster) WaitHealthy() {
	c.t.Helper()
	WaitFor(c.t, "the cluster to be healthy", func() bool {
		for _, n := range c.Nodes {
			if !n.Alive() {
				continue
			}
			r, err := n.Do("cluster", "info")
			text, _ := r.(string)
			if err != nil || !strings.Contains(text, "cluster_state:ok") || !strings.Contains(text, "cluster_slots_ok:16384") {
				return false
			}
			if n.role() == "slave" && n.Info("replication", "master_link_status") != "up" {
				return false
			}
		}
		return true
	})
}

// SlotOwner returns the live primary that serves slot, as the primaries themselves say.
func (c *Cluster) SlotOwner(slot int) *Server {
	c.t.Helper()
	for _, p := range c.Primaries() {
		r, err := p.Do("cluster", "slots")
		ranges, _ := r.([]any)
		if err != nil {
			continue
		}
		for _, rg := range ranges {
			f, _ := rg.([]any)
			if len(f) < 3 {
				continue
			}
			lo, _ := f[0].(int64)
			hi, _ := f[1].(int64)
			node, _ := f[2].([]any)
			if int64(slot) < lo || int64(slot) > hi || len(node) < 2 {
				continue
			}
			addr := fmt.Sprintf("%v:%v", node[0], node[1])
			if i := slices.IndexFunc(c.Nodes, func(n *Server) bool { return n.Addr == addr }); i >= 0 {
				return c.Nodes[i]
			}
		}
	}
	c.t.Fatalf("redistest: no live primary serves slot %d", slot)
	return nil
}

// ReplicaOf returns a live replica of primary.
func (c *Cluster) ReplicaOf(primary *Server) *Server {
	c.t.Helper()
	port := strings.TrimPrefix(primary.Addr, "127.0.0.1:")
	for _, n := range c.Nodes {
		r, err := n.Do("role")
		if l, ok := r.([]any); n.Alive() && err == nil && ok && len(l) > 2 && l[0] == "slave" && fmt.Sprint(l[2]) == port {
			return n
		}
	}
	c.t.Fatalf("redistest: no live replica of %s", primary.Addr)
	return nil
}

// ID is the node's cluster node ID.
func (s *Server) ID() string {
	r, err := s.Do("cluster", "myid")
	if err != nil {
		s.t.Fatalf("cluster myid on %s: %v", s.Addr, err)
	}
	return r.(string)
}

// MigrateSlot moves slot from its owner to the primary to, the way redis-cli --cluster reshard
// does: importing and migrating marks, then MIGRATE of the keys batch by batch (each batch a
// window in which clients get ASK or TRYAGAIN), then the new owner announced to every primary
// (MOVED from then on). between runs after each batch, so that a test can keep its load going.
func (c *Cluster) MigrateSlot(slot int, to *Server, between func()) {
	c.t.Helper()
	from := c.SlotOwner(slot)
	if from == to {
		c.t.Fatalf("redistest: slot %d is on %s already", slot, to.Addr)
	}
	must := func(s *Server, args ...any) any {
		c.t.Helper()
		r, err := s.Do(args...)
		if err != nil {
			c.t.Fatalf("redistest: %v on %s: %v", args, s.Addr, err)
		}
		return r
	}
	must(to, "cluster", "setslot", slot, "importing", from.ID())
	must(from, "cluster", "setslot", slot, "migrating", to.ID())
	host, port, _ := strings.Cut(to.Addr, ":")
	for {
		keys, _ := must(from, "cluster", "getkeysinslot", slot, 10).([]any)
		if len(keys) == 0 {
			break
		}
		args := []any{"migrate", host, port, "", 0, 5000, "keys"}
		must(from, append(args, keys...)...)
		between()
	}
	for _, p := range c.Primaries() {
		must(p, "cluster", "setslot", slot, "node", to.ID())
	}
}

// StartReplica starts a replica of s and waits until s counts it in sync.
func (s *Server) StartReplica(t testing.TB) *Server {
	t.Helper()
	host, port, _ := strings.Cut(s.Addr, ":")
	r := start(t, &Server{t: t, dir: t.TempDir(), extra: []string{"--replicaof", host, port}}, nil)
	WaitFor(t, "the replica "+r.Addr+" to sync", func() bool {
		reply, _ := s.Do("info", "replication")
		text, _ := reply.(string)
		return strings.Contains(text, "port="+strings.TrimPrefix(r.Addr, "127.0.0.1:")+",state=online")
	})
	return r
}

// Sentinel is one primary with replicas, watched by sentinels under the name Name.
type Sentinel struct {
	Name      string
	Servers   []*Server // the primary first, then the replicas
	Sentinels []*Server
	t         testing.TB
}

// SentinelOptions shape a Sentinel set-up.
type SentinelOptions struct {
	Replicas  int
	Sentinels int // a majority of them is the quorum
}

// StartSentinel starts the primary and its replicas, waits until they are in sync, then starts
// the sentinels and waits until each knows the replicas and the other sentinels. A sentinel
// calls the primary down after a second without answer.
func StartSentinel(t testing.TB, opt SentinelOptions) *Sentinel {
	t.Helper()
	s := &Sentinel{Name: "mymaster", t: t}
	primary := Start(t, Options{})
	s.Servers = append(s.Servers, primary)
	for range opt.Replicas {
		s.Servers = append(s.Servers, primary.StartReplica(t))
	}
	quorum := opt.Sentinels/2 + 1
	for range opt.Sentinels {
		s.Sentinels = append(s.Sentinels, start(t, &Server{t: t, dir: t.TempDir()}, func(port int) string {
			return fmt.Sprintf("port %d\nsentinel monitor %s %s %d\nsentinel down-after-milliseconds %[2]s 1000\n"+
				"sentinel failover-timeout %[2]s 10000\nsentinel parallel-syncs %[2]s %[5]d\n",
				port, s.Name, strings.Replace(primary.Addr, ":", " ", 1), quorum, max(1, opt.Replicas))
		}))
	}
	WaitFor(t, "the sentinels to know the replicas and each other", func() bool {
		for _, sn := range s.Sentinels {
			r, err := sn.Do("sentinel", "master", s.Name)
			m := fields(r)
			if err != nil || m["num-slaves"] != strconv.Itoa(opt.Replicas) || m["num-other-sentinels"] != strconv.Itoa(opt.Sentinels-1) {
				return false
			}
		}
		return true
	})
	return s
}

// fields turns a flat reply of names and values (SENTINEL MASTER) into a map.
func fields(r any) map[string]string {
	out := map[string]string{}
	switch l := r.(type) {
	case []any:
		for i := 0; i+1 < len(l); i += 2 {
			k, _ := l[i].(string)
			v, _ := l[i+1].(string)
			out[k] = v
		}
	case map[any]any:
		for k, v := range l {
			ks, _ := k.(string)
			vs, _ := v.(string)
			out[ks] = vs
		}
	}
	return out
}

// Addrs are the sentinels' addresses, what a client is configured with.
func (s *Sentinel) Addrs() []string {
	out := make([]string, len(s.Sentinels))
	for i, n := range s.Sentinels {
		out[i] = n.Addr
	}
	return out
}

// Primary is the server the sentinels name now.
func (s *Sentinel) Primary() *Server {
	s.t.Helper()
	addr := s.primaryAddr(s.Sentinels[0])
	i := slices.IndexFunc(s.Servers, func(n *Server) bool { return n.Addr == addr })
	if i < 0 {
		s.t.Fatalf("redistest: the sentinels name %q, none of the servers", addr)
	}
	return s.Servers[i]
}

func (s *Sentinel) primaryAddr(sn *Server) string {
	r, err := sn.Do("sentinel", "get-master-addr-by-name", s.Name)
	if l, ok := r.([]any); err == nil && ok && len(l) == 2 {
		return fmt.Sprint(l[0]) + ":" + fmt.Sprint(l[1])
	}
	return ""
}

// WaitFailover waits until every sentinel names a primary other than old, that server answers
// as a primary, and every other live server replicates from it with its link up.
func (s *Sentinel) WaitFailover(old *Server) *Server {
	s.t.Helper()
	var primary *Server
	WaitFor(s.t, "the sentinels to promote a replica", func() bool {
		addr := s.primaryAddr(s.Sentinels[0])
		if addr == "" || addr == old.Addr {
			return false
		}
		for _, sn := range s.Sentinels {
			if s.primaryAddr(sn) != addr {
				return false
			}
		}
		i := slices.IndexFunc(s.Servers, func(n *Server) bool { return n.Addr == addr })
		if i < 0 || s.Servers[i].role() != "master" {
			return false
		}
		primary = s.Servers[i]
		for _, n := range s.Servers {
			if n == primary || !n.Alive() {
				continue
			}
			if n.Info("replication", "master_port") != strings.TrimPrefix(addr, "127.0.0.1:") ||
				n.Info("replication", "master_link_status") != "up" {
				return false
			}
		}
		return true
	})
	return primary
}
