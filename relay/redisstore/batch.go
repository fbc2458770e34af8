package redisstore

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
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
// The scripts it runs return an integer.
type batcher struct {
	rdb    redis.UniversalClient
	mu     sync.RWMutex // closed and sends on calls: close waits for senders
	closed bool
	calls  chan scriptCall
	done   chan struct{}
}

func newBatcher(rdb redis.UniversalClient) *batcher {
	b := &batcher{rdb: rdb, calls: make(chan scriptCall, maxPipeline), done: make(chan struct{})}
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
	if len(batch) == 1 {
		n, err := batch[0].script.Run(ctx, b.rdb, batch[0].keys, batch[0].args...).Int()
		batch[0].done <- scriptResult{n, err}
		return
	}
	pipe := b.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(batch))
	for i, c := range batch {
		cmds[i] = c.script.EvalSha(ctx, pipe, c.keys, c.args...)
	}
	_, _ = pipe.Exec(ctx) // each command carries its own result or error
	for i, c := range batch {
		n, err := cmds[i].Int()
		if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
			// Redis lost its script cache (a restart): Run loads the script again. NOSCRIPT means
			// this run did not happen, so running it now is its first run.
			n, err = c.script.Run(ctx, b.rdb, c.keys, c.args...).Int()
		}
		c.done <- scriptResult{n, err}
	}
}
