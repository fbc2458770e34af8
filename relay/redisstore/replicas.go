package redisstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Durable acknowledgement across failover (Options.MinReplicas, docs/SCALING.md). Redis' WAIT
// waits until replicas have every write made so far *on its connection*, so it must follow the
// enqueue scripts on the very connection that ran them: on Cluster that is one per node, which
// go-redis picks inside its pipeline. A hook on each node's client (every node of a Cluster, the
// one client otherwise) appends the WAIT to every pipeline the enqueue batcher sends, and notes
// its answer for the scripts that ran before it. A script that changed nothing (a duplicate, or a
// retry that found its own write) bumps the shard's w key, so that the WAIT covers the write it
// found, which another connection made.

// ErrNotReplicated: the enqueue is done on the primary, but fewer than MinReplicas replicas
// confirmed it in time. A failover may still lose it; the relay answers 503 and the sender's
// retry is deduped.
var ErrNotReplicated = errors.New("write not confirmed by enough replicas in time")

// waitSpec is what the enqueue batcher's pipelines wait for.
type waitSpec struct {
	replicas int
	timeout  time.Duration
}

// waitAcks holds, for each command of one batch, how many replicas the WAIT after it counted.
type waitAcks struct {
	spec *waitSpec
	mu   sync.Mutex
	n    map[redis.Cmder]int64
}

type waitKey struct{}

// with returns ctx carrying a fresh record: the hook waits on the pipelines run with it.
func (w *waitSpec) with(ctx context.Context) (context.Context, *waitAcks) {
	a := &waitAcks{spec: w, n: map[redis.Cmder]int64{}}
	return context.WithValue(ctx, waitKey{}, a), a
}

// confirmed reports whether the last run of cmd was followed by a WAIT that enough replicas met.
func (a *waitAcks) confirmed(cmd redis.Cmder) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	n, ok := a.n[cmd]
	return ok && n >= int64(a.spec.replicas)
}

// hookWait installs the hook on client's node clients.
func hookWait(client redis.UniversalClient) error {
	switch c := client.(type) {
	case *redis.Client:
		c.AddHook(waitHook{})
	case *redis.ClusterClient:
		c.OnNewNode(func(node *redis.Client) { node.AddHook(waitHook{}) })
	default:
		return fmt.Errorf("needs one server, Sentinel or Cluster, not a %T", client)
	}
	return nil
}

// waitHook appends a WAIT to the pipelines run with a waitAcks in their context; it leaves
// every other command and pipeline alone.
type waitHook struct{}

func (waitHook) DialHook(next redis.DialHook) redis.DialHook { return next }

// ProcessHook notes a command of a batch run on its own (clusterPipes' second try after a
// redirect) as unconfirmed: no WAIT follows it on its connection.
func (waitHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if a, _ := ctx.Value(waitKey{}).(*waitAcks); a != nil {
			a.mu.Lock()
			a.n[cmd] = -1
			a.mu.Unlock()
		}
		return err
	}
}

func (waitHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		a, _ := ctx.Value(waitKey{}).(*waitAcks)
		if a == nil {
			return next(ctx, cmds)
		}
		wait := redis.NewIntCmd(ctx, "wait", a.spec.replicas, a.spec.timeout.Milliseconds())
		err := next(ctx, append(cmds[:len(cmds):len(cmds)], wait))
		n, werr := wait.Result()
		if werr != nil {
			n = -1
		}
		a.mu.Lock()
		for _, c := range cmds {
			a.n[c] = n // a command go-redis sends again (MOVED, ASK) is noted again, after its last run
		}
		a.mu.Unlock()
		return err
	}
}
