package redisstore

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// maxPipeline caps the enqueues sent in one pipeline.
const maxPipeline = 256

// senders is how many pipelines may be in flight at once: more than one, so that a batch can form
// and go out while the last one waits for Redis (an fsync, with appendfsync always).
const senders = 4

// pipelineTimeout bounds one pipeline; each caller's own context still bounds its wait to submit.
const pipelineTimeout = 10 * time.Second

var errClosed = errors.New("store closed")

// enqueueCall is one caller's enqueue script run, waiting for its place in a pipeline.
type enqueueCall struct {
	keys []string
	args []any
	done chan enqueueResult
}

type enqueueResult struct {
	n   int
	err error
}

// batcher sends concurrent enqueues to Redis as pipelines: every enqueue that arrived while the
// previous pipelines were in flight goes in the next. Under load that turns a round trip (a write
// and a read on each side) per webhook into one per batch; alone, a call goes out at once.
type batcher struct {
	rdb    redis.UniversalClient
	mu     sync.RWMutex // closed and sends on calls: close waits for senders
	closed bool
	calls  chan enqueueCall
	done   chan struct{}
}

func newBatcher(rdb redis.UniversalClient) *batcher {
	b := &batcher{rdb: rdb, calls: make(chan enqueueCall, maxPipeline), done: make(chan struct{})}
	var wg sync.WaitGroup
	for range senders {
		wg.Go(b.loop)
	}
	go func() { wg.Wait(); close(b.done) }()
	return b
}

// run submits one enqueue and waits for its result. Once submitted it is waited for whatever ctx
// says: returning early would not undo it.
func (b *batcher) run(ctx context.Context, keys []string, args []any) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	c := enqueueCall{keys: keys, args: args, done: make(chan enqueueResult, 1)}
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
	batch := make([]enqueueCall, 0, maxPipeline)
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

func (b *batcher) send(batch []enqueueCall) {
	ctx, cancel := context.WithTimeout(context.Background(), pipelineTimeout)
	defer cancel()
	if len(batch) == 1 {
		n, err := enqueueScript.Run(ctx, b.rdb, batch[0].keys, batch[0].args...).Int()
		batch[0].done <- enqueueResult{n, err}
		return
	}
	pipe := b.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(batch))
	for i, c := range batch {
		cmds[i] = enqueueScript.EvalSha(ctx, pipe, c.keys, c.args...)
	}
	_, _ = pipe.Exec(ctx) // each command carries its own result or error
	for i, c := range batch {
		n, err := cmds[i].Int()
		if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
			// Redis lost its script cache (a restart): Run loads the script again. The script is
			// idempotent, so a run that did happen is not repeated in effect.
			n, err = enqueueScript.Run(ctx, b.rdb, c.keys, c.args...).Int()
		}
		c.done <- enqueueResult{n, err}
	}
}
