package redisstore

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hookrelay/hookrelay/relay"
)

// maxPipeline caps the script runs sent in one pipeline.
const maxPipeline = 256

// senders is how many pipelines may be in flight at once: more than one, so that a batch can form
// and go out while the last one waits for Redis (an fsync, with appendfsync always).
const senders = 4

// pipelineTimeout bounds one pipeline; each caller's own context still bounds its wait to submit.
const pipelineTimeout = 10 * time.Second

var errClosed = errors.New("store closed")

// scriptCall is one caller's script run (an enqueue, ack, retry or bury), waiting for its place
// in a pipeline.
type scriptCall struct {
	script *redis.Script
	keys   []string
	args   []any
	done   chan scriptResult
}

type scriptResult struct {
	n   int
	err error
}

// batcher sends concurrent script runs to Redis as pipelines: every run that arrived while the
// previous pipelines were in flight goes in the next. Under load that turns a round trip (a write
// and a read on each side) per enqueue or ack into one per batch; alone, a call goes out at once.
// The scripts it runs return an integer. With wait set, each pipeline ends with a WAIT on every
// node it reaches (replicas.go), and a run whose write the replicas did not confirm fails with
// ErrNotReplicated (its result still given).
type batcher struct {
	rdb    redis.UniversalClient
	wait   *waitSpec
	mu     sync.RWMutex // closed and sends on calls: close waits for senders
	closed bool
	calls  chan scriptCall
	done   chan struct{}

	pipelines, runs, nanos atomic.Uint64 // WriteStats
}

func newBatcher(rdb redis.UniversalClient, wait *waitSpec) *batcher {
	b := &batcher{rdb: rdb, wait: wait, calls: make(chan scriptCall, maxPipeline), done: make(chan struct{})}
	var wg sync.WaitGroup
	for range senders {
		wg.Go(b.loop)
	}
	go func() { wg.Wait(); close(b.done) }()
	return b
}

// run submits one script run and waits for its result. Once submitted it is waited for whatever ctx
// says: returning early would not undo it.
func (b *batcher) run(ctx context.Context, sc *redis.Script, keys []string, args []any) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	c := scriptCall{script: sc, keys: keys, args: args, done: make(chan scriptResult, 1)}
	b.mu.RLock()
	if b.closed {
		b.mu.RUnlock()
		return 0, errClosed
	}
	b.calls <- c
	b.mu.RUnlock()
	r := <-c.done
	return r.n, r.err
}

// answered reports whether Redis answered cmd, with a result or an error of its own (not a
// connection's failure or a timeout).
func answered(cmd *redis.Cmd) bool {
	err := cmd.Err()
	return err == nil || errors.As(err, new(redis.Error))
}

// stats adds the batcher's pipelines, the runs they carried and their time to w.
func (b *batcher) stats(w *relay.WriteStats) {
	w.Commits += b.pipelines.Load()
	w.Writes += b.runs.Load()
	w.Time += time.Duration(b.nanos.Load())
}

func (b *batcher) close() {
	b.mu.Lock()
	if !b.closed {
		b.closed = true
		close(b.calls)
	}
	b.mu.Unlock()
	<-b.done
}

func (b *batcher) loop() {
	batch := make([]scriptCall, 0, maxPipeline)
	for c := range b.calls {
		batch = append(batch[:0], c)
	drain:
		for len(batch) < maxPipeline {
			select {
			case c, ok := <-b.calls:
				if !ok {
					break drain
				}
				batch = append(batch, c)
			default:
				break drain
			}
		}
		b.send(batch)
	}
}

func (b *batcher) send(batch []scriptCall) {
	ctx, cancel := context.WithTimeout(context.Background(), pipelineTimeout)
	defer cancel()
	var acks *waitAcks
	if b.wait != nil {
		ctx, acks = b.wait.with(ctx)
	}
	start := time.Now()
	cmds := evalAll(ctx, b.rdb, batch)
	if slices.ContainsFunc(cmds, answered) {
		b.pipelines.Add(1)
		b.runs.Add(uint64(len(batch)))
		b.nanos.Add(uint64(time.Since(start)))
	}
	for i, c := range batch {
		n, err := cmds[i].Int()
		if err == nil && acks != nil && !acks.confirmed(cmds[i]) {
			err = ErrNotReplicated
		}
		c.done <- scriptResult{n, err}
	}
}

// evalAll runs the scripts in one pipeline (go-redis splits it by node on Cluster), then those
// Redis did not have in its script cache (NOSCRIPT: not run) with EVAL, which loads them.
func evalAll(ctx context.Context, rdb redis.UniversalClient, runs []scriptCall) []*redis.Cmd {
	cmds := make([]*redis.Cmd, len(runs))
	pipe := rdb.Pipeline()
	for i, r := range runs {
		cmds[i] = r.script.EvalSha(ctx, pipe, r.keys, r.args...)
	}
	_, _ = pipe.Exec(ctx) // each command carries its own result or error
	var again redis.Pipeliner
	for i, r := range runs {
		if redis.HasErrorPrefix(cmds[i].Err(), "NOSCRIPT") {
			if again == nil {
				again = rdb.Pipeline()
			}
			cmds[i] = r.script.Eval(ctx, again, r.keys, r.args...)
		}
	}
	if again != nil {
		_, _ = again.Exec(ctx)
	}
	return cmds
}
